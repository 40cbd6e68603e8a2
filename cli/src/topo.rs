//! `blit topo [--json]`: what this machine looks like to blit — sockets, NUMA nodes and their
//! cores, NICs and verbs devices with their NUMA node and link speed, block devices.

use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct TopoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TopoArgs) -> Exit {
    let topo = match blitx_topology::Topology::discover() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("blit: error: cannot read the topology: {e}");
            return Exit::Fatal;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&topo) {
            Ok(s) => crate::output::write_stdout(&format!("{s}\n")),
            Err(e) => {
                eprintln!("blit: error: {e}");
                return Exit::Fatal;
            }
        }
    } else {
        crate::output::write_stdout(&topo.to_string());
    }
    Exit::Ok
}

/// Computes the placement for a transfer that uses `device` (a NIC, verbs device or disk; None
/// when unknown) and applies it to the calling thread until the guard is dropped: the thread
/// gets the node's CPUs, every worker it starts one CPU of them, every pool it creates is bound
/// to the node (`blitx_topology::enter_placement`). `--numa off`, or a topology that cannot be
/// read, places nothing.
pub fn place_here(
    policy: blitx_topology::NumaPolicy,
    device: Option<&str>,
) -> anyhow::Result<blitx_core::placer::Entered> {
    if policy == blitx_topology::NumaPolicy::Off {
        return Ok(blitx_core::placer::enter(None));
    }
    let topo = match blitx_topology::Topology::discover() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("not placed: cannot read the topology: {e}");
            return Ok(blitx_core::placer::enter(None));
        }
    };
    let placement = blitx_topology::place(&topo, policy, device)?;
    tracing::info!("placement: {placement}");
    Ok(blitx_topology::enter_placement(&placement))
}
