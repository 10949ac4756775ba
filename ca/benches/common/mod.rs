//! What the benchmarks share: their size from the environment, and the CPU the process used.

/// `name` from the environment as a number, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) used by this process so far, from `/proc/self/stat`.
#[allow(dead_code)] // Not every benchmark reads the whole process's CPU.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds used so far by each of this process's threads, by thread name, from
/// `/proc/self/task/*/stat` (threads that have ended are not counted).
#[allow(dead_code)] // Not every benchmark splits its CPU.
pub fn cpu_seconds_by_thread() -> Option<Vec<(String, f64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (head, after_name) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        threads.push((name.to_owned(), ticks / 100.0));
    }
    Some(threads)
}

/// One figure for BENCHMARKS.md (`scripts/benchmarks.sh` collects these lines): the
/// benchmark, what was measured, its value, the floor measured in the same run, the figure's
/// ratio to that floor, and the target with whether it is met.
pub fn result(bench: &str, figure: &str, value: &str, floor: &str, ratio: &str, target: &str) {
    println!("RESULT\t{bench}\t{figure}\t{value}\t{floor}\t{ratio}\t{target}");
}
