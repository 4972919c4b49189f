//! Print a stored run's per-iteration timings by actor, outcome and checkpoint size:
//! `cargo run --release -p actors --example run_timings -- <checkpoint.sled> <run id>`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(id)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: run_timings <checkpoint.sled dir> <run id>");
        std::process::exit(2);
    };
    let run = match actors::checkpointer::load_run(std::path::Path::new(dir), id) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!("it\tcommitted\tsparsity\tppl\tprofiler_ms\tplanner_ms\tcritic_ms\texecutor_ms\tevaluator_ms\tcheckpointer_ms\tdelta_bytes\tcandidates");
    for s in &run.iterations {
        let (o, t) = (&s.record.outcome, &s.timings);
        println!(
            "{}\t{}\t{:.4}->{:.4}\t{:.3}->{:.3}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            o.iteration,
            s.committed.is_some(),
            o.sparsity_before,
            o.sparsity_after,
            o.ppl_before,
            o.ppl_after,
            t.profiler_ms,
            t.planner_ms,
            t.critic_ms,
            t.executor_ms,
            t.evaluator_ms,
            t.checkpointer_ms,
            s.delta_bytes,
            s.candidates.len()
        );
    }
}
