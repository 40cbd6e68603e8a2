//! Hard-link grouping: the first source path seen with an inode is its *leader* and is copied;
//! every later path with the same inode becomes a link to the leader's target path.

use std::collections::HashMap;

use blitx_core::RelPath;
use blitx_core::manifest::InodeKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRole {
    Leader,
    /// Link this path to `leader` once the leader is in place.
    Follower {
        leader: RelPath,
    },
    /// The target path is already the same inode as the leader's target: nothing to do.
    AlreadyLinked,
}

#[derive(Debug, Default)]
pub struct HardlinkTracker {
    leaders: HashMap<InodeKey, (RelPath, Option<InodeKey>)>,
}

impl HardlinkTracker {
    /// Observes a source file with inode `key` at `path`, whose target counterpart (if any)
    /// has inode `target_inode`.
    pub fn observe(
        &mut self,
        key: InodeKey,
        path: &RelPath,
        target_inode: Option<InodeKey>,
    ) -> LinkRole {
        match self.leaders.get(&key) {
            None => {
                self.leaders.insert(key, (path.clone(), target_inode));
                LinkRole::Leader
            }
            Some((leader, leader_target)) => {
                if target_inode.is_some() && target_inode == *leader_target {
                    LinkRole::AlreadyLinked
                } else {
                    LinkRole::Follower { leader: leader.clone() }
                }
            }
        }
    }

    pub fn set_leader_target(&mut self, key: InodeKey, target_inode: Option<InodeKey>) {
        if let Some(l) = self.leaders.get_mut(&key) {
            l.1 = target_inode;
        }
    }

    /// Number of distinct multiply-linked inodes seen (memory grows with this, not with files).
    pub fn len(&self) -> usize {
        self.leaders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leaders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_then_followers() {
        let mut t = HardlinkTracker::default();
        let k = InodeKey { dev: 1, ino: 9 };
        let a = RelPath::parse_str("a").unwrap();
        let b = RelPath::parse_str("d/b").unwrap();
        let tk = InodeKey { dev: 5, ino: 5 };
        assert_eq!(t.observe(k, &a, Some(tk)), LinkRole::Leader);
        assert_eq!(t.observe(k, &b, None), LinkRole::Follower { leader: a.clone() });
        assert_eq!(t.observe(k, &b, Some(tk)), LinkRole::AlreadyLinked);
        assert_eq!(t.len(), 1);
    }
}
