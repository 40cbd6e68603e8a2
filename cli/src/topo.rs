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

/// Computes and applies the placement for a transfer that uses `device` (a NIC, verbs device or
/// disk; None when unknown), on the calling thread so every thread created afterwards inherits
/// it. Returns the reason, for logs and the summary.
pub fn place_here(
    policy: blitx_topology::NumaPolicy,
    device: Option<&str>,
) -> anyhow::Result<String> {
    if policy == blitx_topology::NumaPolicy::Off {
        return Ok("off".into());
    }
    let topo = match blitx_topology::Topology::discover() {
        Ok(t) => t,
        Err(e) => return Ok(format!("not placed: cannot read the topology: {e}")),
    };
    let placement = blitx_topology::place(&topo, policy, device)?;
    blitx_topology::apply_to_current_thread(&placement);
    tracing::info!("placement: {placement}");
    Ok(placement.to_string())
}
