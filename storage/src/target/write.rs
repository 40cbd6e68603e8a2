//! Writing: the writer threads take frames from the transport and put their payloads into
//! temporary files (buffered, direct, spliced or copied in the kernel), verifying checksums as
//! they go; small files arrive in bundles and are written and named whole.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn writer(shared: &Shared<'_>) {
    let stages = &shared.progress.stages;
    loop {
        let waiting = Instant::now();
        let received = shared.transport.recv();
        stages.add(Stage::Receive, waiting);
        let writing = Instant::now();
        let frame = match received {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(TransportError::Cancelled) => return,
            Err(e) => {
                shared.fail(TargetError::Transport(e));
                return;
            }
        };
        let result = match frame.header.kind {
            FrameKind::Bundle => write_bundle(shared, &frame),
            FrameKind::Chunk | FrameKind::Hole | FrameKind::Same | FrameKind::Delta => {
                write_chunk(shared, frame)
            }
            FrameKind::End => Ok(()),
        };
        stages.add(Stage::Write, writing);
        if let Err(e) = result {
            shared.fail(e);
            return;
        }
    }
}

/// Creates the temp file of `p`; a chunked file that may go direct (`--io`) also gets its
/// `O_DIRECT` descriptor.
pub(super) fn create_temp(shared: &Shared<'_>, p: &Pending, chunked: bool) -> io::Result<Temp> {
    let (dir, name) =
        p.path.split_last().ok_or_else(|| io::Error::other("the root is not a file"))?;
    let dfd = shared.dirs.get(&dir)?;
    let tmp = temp_name(name);
    let params = &shared.opts.params;
    // A delta file's chunks are rebuilt in memory and written with pwrite.
    let wants_direct =
        chunked && p.basis.is_none() && direct::wants_direct(params.io, p.size_bytes, p.sparse);
    // The direct descriptor is a second open for writing: the owner needs write permission
    // meanwhile, even for a read-only file (its mode is applied at commit).
    let mode = if wants_direct { p.meta.mode | 0o200 } else { p.meta.mode };
    let fd = rustix::fs::openat(
        dfd.as_fd(),
        fsys::os(&tmp),
        // Read access too: a spliced piece is read back to verify its checksum.
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    fsys::mark_temp(fd.as_fd());
    let file = File::from(fd);
    let direct = wants_direct
        .then(|| DirectFile::open(dfd.as_fd(), &tmp, &file, params.io, params.io_depth, true))
        .flatten()
        .map(Arc::new);
    let widened = mode != p.meta.mode;
    Ok(Temp { file: Arc::new(file), direct, widened, name: tmp, dir: dfd })
}

pub(super) fn write_bundle(shared: &Shared<'_>, frame: &Frame) -> Result<(), TargetError> {
    if shared.opts.params.mem_bytes.is_some() {
        return Err(TargetError::Protocol(Violation::BundleInMemorySession));
    }
    let Payload::Buffer(lease) = &frame.payload else {
        return Err(TargetError::Protocol(Violation::BundleNotBuffered));
    };
    let data = lease.data();
    if data.len() != frame.header.len_bytes as usize {
        return Err(TargetError::Protocol(Violation::BundleLength));
    }
    frame.header.verify(data).map_err(|e| TargetError::Protocol(e.into()))?;
    let items = frame::parse_bundle(data).map_err(|e| TargetError::Protocol(e.into()))?;
    // One lock for the whole bundle, not one per file. Failed items are reported by the source
    // (FileFailed).
    let files: Vec<(&frame::BundleItem, Arc<Pending>)> = {
        let mut files = lock(&shared.files);
        let mut claimed = Vec::with_capacity(items.len());
        for item in items.iter().filter(|i| !i.failed()) {
            let admitted = files.bundled(item.file_id, u64::from(item.len_bytes));
            if let Some(p) = admitted.map_err(TargetError::Protocol)? {
                claimed.push((item, p));
            }
        }
        claimed
    };
    let mut results = Vec::with_capacity(files.len());
    // Consecutive files usually share a directory: keep its handle.
    let mut dir_cache: Option<(RelPath, Arc<OwnedFd>)> = None;
    for (item, p) in &files {
        let bytes = &data[item.data_offset..item.data_offset + item.len_bytes as usize];
        let Some((dir, name)) = p.path.split_last() else {
            return Err(TargetError::Protocol(Violation::DataForRoot));
        };
        let dfd = match &dir_cache {
            Some((d, fd)) if *d == dir => Ok(Arc::clone(fd)),
            _ => {
                shared.dirs.get(&dir).inspect(|fd| dir_cache = Some((dir.clone(), Arc::clone(fd))))
            }
        };
        let written = dfd.and_then(|dfd| write_small(shared, p, &dfd, name, bytes));
        if written.is_ok() {
            Progress::add(&shared.progress.bytes_done, p.size_bytes);
        }
        results.push((item.file_id, written));
    }
    let mut steps = Vec::with_capacity(results.len());
    {
        let mut files = lock(&shared.files);
        for (id, written) in results {
            files.small_written(id, written, &mut steps);
        }
    }
    carry_out(shared, steps);
    Ok(())
}

/// How a small file gets its name. `O_TMPFILE` creates it without any name, and `linkat` gives
/// it its real name only once it is complete, so even SIGKILL leaves nothing behind; where the
/// file system cannot do that, a named temporary file and a rename.
///
/// How `linkat` names an anonymous file depends on the process's privileges (`AT_EMPTY_PATH`
/// needs `CAP_DAC_READ_SEARCH`, else `/proc/self/fd`): learnt once per process.
pub(super) const LINK_UNKNOWN: u8 = 0;
pub(super) const LINK_EMPTY_PATH: u8 = 1;
pub(super) const LINK_PROC: u8 = 2;
pub(super) static LINK_MODE: std::sync::atomic::AtomicU8 =
    std::sync::atomic::AtomicU8::new(LINK_UNKNOWN);

/// Whether `O_TMPFILE` works depends on the file system: the devices that refused it, so one
/// file system without it (a FUSE or network mount below a daemon's root) does not turn it off
/// for the others. Bounded; past the bound a refusing file system costs one failed `open`
/// per small file.
#[derive(Debug, Default)]
pub(super) struct NoTmpfile {
    devices: Vec<u64>,
}

impl NoTmpfile {
    const MAX: usize = 64;

    fn refused(&self, dev: u64) -> bool {
        self.devices.contains(&dev)
    }

    fn remember(&mut self, dev: u64) {
        if self.devices.len() < Self::MAX && !self.refused(dev) {
            self.devices.push(dev);
        }
    }
}

pub(super) static NO_TMPFILE: Mutex<NoTmpfile> = Mutex::new(NoTmpfile { devices: Vec::new() });
/// Set once any file system refused: until then the check costs one atomic load.
pub(super) static ANY_NO_TMPFILE: AtomicBool = AtomicBool::new(false);

/// Whether `dir`'s file system refused `O_TMPFILE` before (an `fstat` only once any has).
pub(super) fn tmpfile_refused_in(dir: BorrowedFd<'_>) -> bool {
    if !ANY_NO_TMPFILE.load(Ordering::Relaxed) {
        return false;
    }
    rustix::fs::fstat(dir).is_ok_and(|st| lock(&NO_TMPFILE).refused(st.st_dev))
}

pub(super) fn remember_tmpfile_refused(dir: BorrowedFd<'_>) {
    if let Ok(st) = rustix::fs::fstat(dir) {
        lock(&NO_TMPFILE).remember(st.st_dev);
        ANY_NO_TMPFILE.store(true, Ordering::Relaxed);
    }
}

/// Writes and commits one small file in `dir` (all of its bytes are in `data`).
pub(super) fn write_small(
    shared: &Shared<'_>,
    p: &Pending,
    dir: &Arc<OwnedFd>,
    name: &[u8],
    data: &[u8],
) -> io::Result<()> {
    let preserve = shared.owners;
    if !tmpfile_refused_in(dir.as_fd()) {
        match rustix::fs::openat(
            dir.as_fd(),
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(p.meta.mode),
        ) {
            Ok(fd) => {
                let file = File::from(fd);
                write_all_at(&file, data, 0, p.sparse)?;
                meta::apply_to_new_file(file.as_fd(), &p.meta, &shared.id, preserve)?;
                shared.sync_file(file.as_fd())?;
                shared.touched(&p.path);
                return link_anonymous(&file, dir, name);
            }
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL,
            ) => {
                remember_tmpfile_refused(dir.as_fd());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let temp = create_temp(shared, p, false)?;
    let r = write_all_at(&temp.file, data, 0, p.sparse).and_then(|()| commit(shared, p, &temp));
    if r.is_err() {
        let _ = rustix::fs::unlinkat(temp.dir.as_fd(), fsys::os(&temp.name), AtFlags::empty());
    }
    r
}

/// Gives an `O_TMPFILE` file its name. When the name is taken (an update), the file is linked
/// under a temporary name and renamed over the old one, so the replacement stays atomic.
pub(super) fn link_anonymous(file: &File, dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let link = |target: &[u8]| -> rustix::io::Result<()> {
        loop {
            match LINK_MODE.load(Ordering::Relaxed) {
                LINK_PROC => {
                    let proc_path =
                        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
                    return rustix::fs::linkat(
                        rustix::fs::CWD,
                        proc_path.as_str(),
                        dir,
                        fsys::os(target),
                        AtFlags::SYMLINK_FOLLOW,
                    );
                }
                _ => match rustix::fs::linkat(file, "", dir, fsys::os(target), AtFlags::EMPTY_PATH)
                {
                    // Without CAP_DAC_READ_SEARCH the kernel refuses AT_EMPTY_PATH with ENOENT.
                    Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM)
                        if LINK_MODE.load(Ordering::Relaxed) != LINK_EMPTY_PATH =>
                    {
                        LINK_MODE.store(LINK_PROC, Ordering::Relaxed);
                    }
                    r => {
                        if r.is_ok() {
                            LINK_MODE.store(LINK_EMPTY_PATH, Ordering::Relaxed);
                        }
                        return r;
                    }
                },
            }
        }
    };
    match link(name) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => {
            let tmp = temp_name(name);
            link(&tmp)?;
            rustix::fs::renameat(dir, fsys::os(&tmp), dir, fsys::os(name)).map_err(|e| {
                let _ = rustix::fs::unlinkat(dir, fsys::os(&tmp), AtFlags::empty());
                io::Error::from(e)
            })
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn write_chunk(shared: &Shared<'_>, mut frame: Frame) -> Result<(), TargetError> {
    let h = frame.header;
    let admitted = lock(&shared.files).chunk(&h, frame.payload.len_bytes());
    let written = match admitted.map_err(TargetError::Protocol)? {
        // Dropping the frame discards its payload (a lent stream is read to its end).
        Admit::Drop => return Ok(()),
        // A memory session's sink: verified, then dropped.
        Admit::Verify => verify_only(&mut frame.payload, &h)?,
        // The partial file holds it already (the source hashed it the same).
        Admit::Same => Written::Verified,
        Admit::Write { shell: p, .. } => match temp_of(shared, &p) {
            Err(e) => Written::Failed(FileOp::Create, e),
            // Given up meanwhile: `written` below ignores what this says.
            Ok(None) => Written::Verified,
            Ok(Some((temp_file, _))) if h.kind == FrameKind::Delta => {
                write_delta(shared, &p, &temp_file, &frame.payload, &h)?
            }
            Ok(Some((temp_file, direct))) => {
                let written = match direct.as_deref() {
                    Some(d) => write_direct(d, &mut frame.payload, &h),
                    None => None,
                };
                match written {
                    Some(w) => w,
                    None => {
                        write_payload(&temp_file, &p.writing, &mut frame.payload, &h, p.sparse)?
                    }
                }
            }
        },
    };
    drop(frame);
    let verified = matches!(written, Written::Verified);
    let mut steps = Vec::new();
    lock(&shared.files).written(&h, written, &mut steps).map_err(TargetError::Protocol)?;
    if verified {
        // A recipe or a Same frame stands for the whole chunk.
        let chunk = u64::from(shared.opts.params.chunk_bytes);
        let bytes = match h.kind {
            FrameKind::Delta | FrameKind::Same => lock(&shared.files)
                .size_of(h.file_id)
                .map_or(0, |size| size.saturating_sub(h.offset_bytes).min(chunk)),
            _ => u64::from(h.len_bytes),
        };
        Progress::add(&shared.progress.bytes_done, bytes);
    }
    carry_out(shared, steps);
    Ok(())
}

/// Rebuilds a chunk from its recipe and the basis, checks it against the source's checksum and
/// writes it. A recipe that breaks its bounds ends the session (a protocol violation).
fn write_delta(
    shared: &Shared<'_>,
    p: &Pending,
    temp: &File,
    payload: &Payload,
    h: &frame::FrameHeader,
) -> Result<Written, TargetError> {
    let Payload::Buffer(lease) = payload else {
        return Err(TargetError::Protocol(Violation::BadRecipe {
            path: p.path.clone(),
            offset_bytes: h.offset_bytes,
            why: "not carried in a buffer".into(),
        }));
    };
    thread_local! {
        /// Each writer's buffer for rebuilt chunks (one chunk's size, kept between chunks).
        static REBUILT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let chunk_bytes = shared.opts.params.chunk_bytes;
    REBUILT.with_borrow_mut(|out| {
        Ok(match rebuild(p, h, lease.data(), chunk_bytes, out).map_err(TargetError::Protocol)? {
            Err(e) => Written::Failed(FileOp::ReadBasis, e),
            Ok(Rebuilt::Mismatch) => Written::Mismatch,
            Ok(Rebuilt::Bytes) => {
                let _one_at_a_time = lock(&p.writing);
                match pwrite_all(temp, out, h.offset_bytes) {
                    Ok(()) => Written::Verified,
                    Err(e) => Written::Failed(FileOp::Write, e),
                }
            }
        })
    })
}

/// A temporary file's descriptors: buffered, and direct (`--io`).
pub(super) type TempFiles = (Arc<File>, Option<Arc<DirectFile>>);

/// The temporary file of `p` (created, preallocated, at the first chunk), or `None` if the file
/// was given up meanwhile.
pub(super) fn temp_of(shared: &Shared<'_>, p: &Pending) -> io::Result<Option<TempFiles>> {
    let mut slot = lock(&p.temp);
    if let TempSlot::Parked(_) = *slot
        && let TempSlot::Parked(pk) = std::mem::replace(&mut *slot, TempSlot::Gone)
    {
        // A resumed file's partial file (or, for a repeated chunk, a complete one): reopened to
        // write, only if it is still the same file.
        match reopen(shared, p, &pk) {
            Ok(t) => *slot = TempSlot::Open(t),
            Err(e) => {
                *slot = TempSlot::Parked(pk);
                return Err(e);
            }
        }
    }
    if let TempSlot::NotYet = *slot {
        let t = create_temp(shared, p, true)?;
        if let Err(e) = preallocate(&t.file, p.size_bytes, p.sparse) {
            let _ = rustix::fs::unlinkat(t.dir.as_fd(), fsys::os(&t.name), AtFlags::empty());
            return Err(e);
        }
        *slot = TempSlot::Open(t);
    }
    Ok(match &*slot {
        TempSlot::Open(t) => Some((Arc::clone(&t.file), t.direct.clone())),
        _ => None,
    })
}

/// Reopens a parked temporary file to write into it: beneath its directory handle, never
/// through a symlink, and only if it is still the same file; with its direct descriptor if it
/// may go direct.
fn reopen(shared: &Shared<'_>, p: &Pending, pk: &Parked) -> io::Result<Temp> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(pk.dir.as_fd(), fsys::os(&pk.name), flags, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if (st.st_dev, st.st_ino) != (pk.dev, pk.ino) {
        return Err(io::Error::other("its temporary file was replaced while it waited"));
    }
    let file = File::from(fd);
    let params = &shared.opts.params;
    let direct = (p.basis.is_none() && direct::wants_direct(params.io, p.size_bytes, p.sparse))
        .then(|| {
            DirectFile::open(pk.dir.as_fd(), &pk.name, &file, params.io, params.io_depth, true)
        })
        .flatten()
        .map(Arc::new);
    Ok(Temp {
        file: Arc::new(file),
        direct,
        widened: pk.widened,
        name: pk.name.clone(),
        dir: Arc::clone(&pk.dir),
    })
}

/// A memory session's sink: checks a chunk's checksum and writes it nowhere. `Err` only when
/// the transport failed (a lent payload could not be read).
pub(super) fn verify_only(
    payload: &mut Payload,
    h: &frame::FrameHeader,
) -> Result<Written, TargetError> {
    let ok = match payload {
        Payload::Empty => true,
        Payload::Buffer(lease) => h.verify(lease.data()).is_ok(),
        // Only an in-process transport hands over file regions; no byte of it was exposed.
        Payload::File(_) => true,
        Payload::Stream(stream) => PIECE.with(|piece| {
            let mut piece = piece.borrow_mut();
            if piece.len() < frame::HASH_PIECE_BYTES {
                piece.resize(frame::HASH_PIECE_BYTES, 0);
            }
            let mut hasher = frame::Hasher::default();
            while stream.remaining() > 0 {
                let n = stream.remaining().min(frame::HASH_PIECE_BYTES as u64) as usize;
                stream.read_exact(&mut piece[..n]).map_err(TargetError::Transport)?;
                hasher.update(&piece[..n]);
            }
            Ok::<_, TargetError>(
                h.flags & frame::FLAG_UNCHECKED != 0 || hasher.finish() == h.checksum,
            )
        })?,
    };
    Ok(if ok { Written::Verified } else { Written::Mismatch })
}

/// Writes a buffer payload through the file's direct descriptor, verifying its checksum while
/// the device takes it (a mismatch discards the file, so writing first is safe). `None` when the
/// payload cannot go direct (not a buffer, or not aligned): the caller writes it buffered.
pub(super) fn write_direct(
    d: &DirectFile,
    payload: &mut Payload,
    h: &frame::FrameHeader,
) -> Option<Written> {
    let Payload::Buffer(lease) = payload else { return None };
    let len = lease.len();
    if !d.fits(lease.as_ptr(), lease.capacity(), len) {
        return None;
    }
    let mut verified = false;
    let r = d.write(lease.full_mut(), len, h.offset_bytes, |data| {
        verified = h.verify(data).is_ok();
    });
    Some(match r {
        Ok(()) if verified => Written::Verified,
        Ok(()) => Written::Mismatch,
        Err(e) => Written::Failed(FileOp::Write, e),
    })
}

thread_local! {
    /// A writer thread's piece buffer for lent payloads: one hash piece, small enough to stay
    /// in cache between the socket read, the hash and the write.
    static PIECE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes one chunk's payload at its offset, verifying its checksum. `Err` only when the
/// transport failed (a lent payload could not be read): that ends the session.
pub(super) fn write_payload(
    file: &File,
    writing: &Mutex<()>,
    payload: &mut Payload,
    h: &frame::FrameHeader,
    sparse: bool,
) -> Result<Written, TargetError> {
    let io = |r: io::Result<bool>| match r {
        Ok(true) => Written::Verified,
        Ok(false) => Written::Mismatch,
        Err(e) => Written::Failed(FileOp::Write, e),
    };
    let unchecked = h.flags & frame::FLAG_UNCHECKED != 0;
    Ok(match payload {
        Payload::Empty => Written::Verified,
        // Sparse files' writes skip zero blocks, so their payload is verified whole first.
        Payload::Buffer(lease) if sparse => {
            if !unchecked && h.verify(lease.data()).is_err() {
                return Ok(Written::Mismatch);
            }
            let _w = lock(writing);
            io(write_all_at(file, lease.data(), h.offset_bytes, true).map(|()| true))
        }
        // Plain chunks are verified piece by piece as they are written, while each piece is in
        // cache.
        Payload::Buffer(lease) => {
            io(write_verified(file, writing, lease.data(), h.offset_bytes, h))
        }
        // An in-process region is a kernel copy from file to file; no byte passes through
        // memory of ours that could be damaged.
        Payload::File(region) if sparse => {
            let _w = lock(writing);
            io(copy_data_segments(&region.file, file, h.offset_bytes, u64::from(region.len_bytes))
                .map(|()| true))
        }
        Payload::File(region) => {
            let _w = lock(writing);
            io(copy_range(&region.file, file, h.offset_bytes, u64::from(region.len_bytes))
                .map(|()| true))
        }
        Payload::Stream(stream) => PIECE.with(|piece| {
            let mut piece = piece.borrow_mut();
            write_stream(file, writing, stream.as_mut(), h, sparse, &mut piece)
        })?,
    })
}

/// Reads a lent payload from its socket piece by piece, hashing and writing each piece while it
/// is in cache. A failed write stops writing; the rest of the payload is discarded when the
/// stream is dropped.
pub(super) fn write_stream(
    file: &File,
    writing: &Mutex<()>,
    stream: &mut dyn PayloadStream,
    h: &frame::FrameHeader,
    sparse: bool,
    piece: &mut Vec<u8>,
) -> Result<Written, TargetError> {
    let total = stream.remaining();
    let piece_bytes = if sparse { total as usize } else { frame::HASH_PIECE_BYTES };
    if piece.len() < piece_bytes {
        piece.resize(piece_bytes, 0);
    }
    if sparse {
        // The zero-block skipping needs the whole payload, verified first.
        let data = &mut piece[..total as usize];
        stream.read_exact(data).map_err(TargetError::Transport)?;
        if h.verify(data).is_err() {
            return Ok(Written::Mismatch);
        }
        let _w = lock(writing);
        return Ok(match write_all_at(file, data, h.offset_bytes, true) {
            Ok(()) => Written::Verified,
            Err(e) => Written::Failed(FileOp::Write, e),
        });
    }
    let mut hasher = frame::Hasher::default();
    let mut at = h.offset_bytes;
    while stream.remaining() > 0 {
        let n = stream.remaining().min(piece_bytes as u64) as usize;
        let data = &mut piece[..n];
        let w = lock(writing);
        let spliced = stream.splice_to(file, at, n);
        drop(w);
        match spliced {
            // Socket → pipe → file without a copy of ours; read back to verify, while the
            // piece is still in cache.
            Some(Ok(Ok(()))) => {
                if let Err(e) = read_back(file, data, at) {
                    return Ok(Written::Failed(FileOp::Write, e));
                }
                hasher.update(data);
                at += n as u64;
                continue;
            }
            Some(Ok(Err(e))) => return Ok(Written::Failed(FileOp::Write, e)),
            Some(Err(e)) => return Err(TargetError::Transport(e)),
            None => {}
        }
        stream.read_exact(data).map_err(TargetError::Transport)?;
        hasher.update(data);
        let w = lock(writing);
        let r = pwrite_all(file, data, at);
        drop(w);
        if let Err(e) = r {
            return Ok(Written::Failed(FileOp::Write, e));
        }
        at += n as u64;
    }
    Ok(if hasher.finish() == h.checksum { Written::Verified } else { Written::Mismatch })
}

/// Reserves the file's extents (`fallocate`), except for sparse files and in memory (tmpfs,
/// ramfs): there `fallocate` is no cheap reservation but allocates and clears every page of the
/// file at once (kernels built with `init_on_alloc`, Debian's default), in the writer that
/// creates the temp file while the other chunks of the file wait. Writing allocates the same
/// pages spread over the transfer instead.
pub(super) fn preallocate(file: &File, size_bytes: u64, sparse: bool) -> io::Result<()> {
    if size_bytes == 0 {
        return Ok(());
    }
    if !sparse && !direct::in_memory_fs(file) {
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size_bytes) {
            Ok(()) => return Ok(()),
            // Not every file system can preallocate; the size is what matters.
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::ftruncate(file, size_bytes)?;
    Ok(())
}

/// Reads back what was just written at `offset` (a spliced piece, to verify it).
pub(super) fn read_back(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(file, &mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than written",
                ));
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes `data` at `offset` piece by piece, hashing each piece just before writing it; returns
/// whether the checksum matched the header's (always true for unchecked frames).
pub(super) fn write_verified(
    file: &File,
    writing: &Mutex<()>,
    data: &[u8],
    offset: u64,
    h: &frame::FrameHeader,
) -> io::Result<bool> {
    let unchecked = h.flags & frame::FLAG_UNCHECKED != 0;
    let mut hasher = frame::Hasher::default();
    let mut at = offset;
    for piece in data.chunks(frame::HASH_PIECE_BYTES) {
        if !unchecked {
            hasher.update(piece);
        }
        let _w = lock(writing);
        pwrite_all(file, piece, at)?;
        at += piece.len() as u64;
    }
    Ok(unchecked || hasher.finish() == h.checksum)
}

pub(super) const ZERO_BLOCK_BYTES: usize = 4096;

/// Writes `data` at `offset`. For sparse files, all-zero 4 KiB blocks are skipped (the file was
/// already extended to its full size), so holes stay holes.
pub(super) fn write_all_at(file: &File, data: &[u8], offset: u64, sparse: bool) -> io::Result<()> {
    if !sparse {
        return pwrite_all(file, data, offset);
    }
    let mut at = 0;
    while at < data.len() {
        let end = (at + ZERO_BLOCK_BYTES).min(data.len());
        if data[at..end].iter().all(|&b| b == 0) {
            at = end;
            continue;
        }
        // Extend the run over following non-zero blocks and write it in one call.
        let mut run_end = end;
        while run_end < data.len() {
            let next = (run_end + ZERO_BLOCK_BYTES).min(data.len());
            if data[run_end..next].iter().all(|&b| b == 0) {
                break;
            }
            run_end = next;
        }
        pwrite_all(file, &data[at..run_end], offset + at as u64)?;
        at = run_end;
    }
    Ok(())
}

pub(super) fn pwrite_all(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(file, data, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote nothing")),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies a range between files in the kernel (copy_file_range: no user-space copy, reflinks
/// where the file system can), falling back to read/write when the kernel refuses.
pub(super) fn copy_range(src: &File, dst: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = offset + done;
        let mut off_out = offset + done;
        let want = usize::try_from(len - done).unwrap_or(usize::MAX);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source shrank while being copied",
                ));
            }
            Ok(n) => done += n as u64,
            Err(rustix::io::Errno::INTR) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::INVAL,
            ) => {
                return copy_range_buffered(src, dst, offset + done, len - done);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies only the data segments of `[offset, offset+len)` of a sparse source (SEEK_DATA /
/// SEEK_HOLE), so holes stay holes in the target (which was already extended to full size).
pub(super) fn copy_data_segments(src: &File, dst: &File, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let data = match rustix::fs::seek(src, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => return Ok(()),
            Err(_) => return copy_range(src, dst, at, end - at),
        };
        if data >= end {
            return Ok(());
        }
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data)).unwrap_or(end).min(end);
        copy_range(src, dst, data, hole - data)?;
        at = hole;
    }
    Ok(())
}

pub(super) fn copy_range_buffered(src: &File, dst: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; (256 << 10).min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = rustix::io::pread(src, &mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shrank while being copied",
            ));
        }
        pwrite_all(dst, &buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Finalization

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_without_tmpfile_leaves_the_others_alone() {
        let mut n = NoTmpfile::default();
        n.remember(7);
        n.remember(7);
        assert!(n.refused(7) && !n.refused(8));
        assert_eq!(n.devices.len(), 1);
        for dev in 100..300 {
            n.remember(dev);
        }
        assert_eq!(n.devices.len(), NoTmpfile::MAX, "bounded");
        assert!(n.refused(7) && n.refused(100) && !n.refused(299));
    }
}
