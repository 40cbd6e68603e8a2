//! `blit-sim`: runs simulated transfers from seeds and checks their invariants.
//!
//! ```text
//! blit-sim --seeds 10000 [--from 0]   # CI: a range of seeds, stops at the first failure
//! blit-sim --seed 1234 --trace        # replay one seed with its event trace
//! ```

use std::process::ExitCode;
use std::time::Instant;

fn usage() -> ExitCode {
    eprintln!("usage: blit-sim --seeds N [--from S] | --seed S [--trace]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds: Option<u64> = None;
    let mut from = 0u64;
    let mut one: Option<u64> = None;
    let mut trace = false;
    let mut i = 0;
    while i < args.len() {
        let value = |i: usize| args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match args[i].as_str() {
            "--seeds" => match value(i) {
                Some(v) => seeds = Some(v),
                None => return usage(),
            },
            "--from" => match value(i) {
                Some(v) => from = v,
                None => return usage(),
            },
            "--seed" => match value(i) {
                Some(v) => one = Some(v),
                None => return usage(),
            },
            "--trace" => {
                trace = true;
                i += 1;
                continue;
            }
            _ => return usage(),
        }
        i += 2;
    }
    if let Some(seed) = one {
        let run = blitx_sim::run(seed, trace);
        if trace {
            print!("{}", run.trace);
        }
        if let Some(first) = &run.first {
            println!(
                "first run: {:?} (killed: {:?}, resume {}); faults {:?}",
                first.ending, first.kill, first.resume, first.faults
            );
        }
        println!("seed {seed}: {:?}; faults {:?}", run.ending, run.faults);
        println!("done: {}, errors: {}", run.done.len(), run.errors.len());
        for e in &run.errors {
            println!("  {}: {e}", e.path);
        }
        return match blitx_sim::check(&run) {
            Ok(()) => {
                println!("invariants hold");
                ExitCode::SUCCESS
            }
            Err(why) => {
                println!("INVARIANT BROKEN: {why}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(count) = seeds else { return usage() };
    let started = Instant::now();
    let mut endings = std::collections::BTreeMap::<String, u64>::new();
    let mut files_done = 0u64;
    let mut file_errors = 0u64;
    let (mut killed, mut second_runs, mut lost) = (0u64, 0u64, 0u64);
    let (mut resumed, mut reused_bytes, mut resent_bytes) = (0u64, 0u64, 0u64);
    for seed in from..from.saturating_add(count) {
        let run = blitx_sim::run(seed, false);
        if let Err(why) = blitx_sim::check(&run) {
            eprintln!("seed {seed}: INVARIANT BROKEN: {why}");
            eprintln!("replay: {}", blitx_sim::replay_command(seed));
            return ExitCode::FAILURE;
        }
        let kind = format!("{:?}", run.ending);
        let kind = kind.split('(').next().unwrap_or_default().to_string();
        *endings.entry(kind).or_default() += 1;
        killed += u64::from(run.runs().any(|r| r.kill.is_some()));
        second_runs += u64::from(run.first.is_some());
        for r in run.runs() {
            files_done += r.done.len() as u64;
            file_errors += r.errors.len() as u64;
            lost += u64::from(r.lost_control);
            resumed += r.resumed;
            reused_bytes += r.reused_bytes;
            resent_bytes += r.resent_bytes;
        }
    }
    println!(
        "{count} seeds from {from} in {:.1} s: invariants held in every run; endings {endings:?}; \
         {files_done} files done, {file_errors} file errors; {killed} seeds killed a run, \
         {second_runs} ran a second time; {lost} lost a control message; {resumed} files \
         resumed: {reused_bytes} bytes reused, {resent_bytes} bytes their journals recorded \
         sent again",
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
