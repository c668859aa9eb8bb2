//! CPU time of the system's processes over the run (`--pid`, `--service-pid NAME=PID`, the local
//! nats-server and the load generator itself): each process's user + system time from
//! `/proc/<pid>/stat` (all its threads), read at the bounds of the phases, so a service's share of
//! the run (of the listed processes' CPU and of the machine's: cores × wall time) can be told.
//! The machine's idle time (`/proc/stat`) is read at the same bounds: on a small machine the
//! system, PostgreSQL, NATS and the load generator share the cores, and what is left idle tells
//! whether a phase was bound by CPU or by waiting.

use std::time::Instant;

/// A process's user + system CPU time in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
/// The command name (field 2) is in parentheses and may itself hold spaces and parentheses: the
/// fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (the state): utime is field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The process's CPU time in clock ticks; `None`: no such process (or not readable).
pub fn ticks(pid: u32) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The machine's idle and total CPU time in clock ticks, all cores (the first line of
/// `/proc/stat`: user nice system idle iowait irq softirq steal ...); idle counts iowait too.
pub fn parse_machine(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    (fields.next()? == "cpu").then_some(())?;
    let ticks: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((idle, ticks.iter().sum()))
}

fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), read once through `getconf CLK_TCK` (the
/// crate has no libc and no unsafe code); 100, Linux's value nearly everywhere, if that fails.
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The process's command line, up to its first three words (`amba serve notification`).
pub fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .take(3)
        .enumerate()
        .map(|(i, w)| {
            let w = String::from_utf8_lossy(w);
            if i == 0 {
                w.rsplit('/').next().unwrap_or_default().to_owned()
            } else {
                w.into_owned()
            }
        })
        .collect();
    if words.is_empty() {
        "system".to_owned()
    } else {
        words.join(" ")
    }
}

/// Every watched process's CPU ticks at one moment (`None`: unreadable, the process is gone).
struct Mark {
    /// The phase that begins here (the last mark ends the run).
    phase: &'static str,
    at: Instant,
    ticks: Vec<Option<u64>>,
    /// The machine's (idle, total) ticks.
    machine: Option<(u64, u64)>,
}

pub struct Watch {
    /// (label, pid)
    processes: Vec<(String, u32)>,
    ticks_per_second: f64,
    cores: usize,
    marks: Vec<Mark>,
}

impl Watch {
    /// Starts watching `processes` (label, pid): the first phase, `phase`, begins now.
    pub fn start(processes: Vec<(String, u32)>, phase: &'static str) -> Watch {
        let mut watch = Watch {
            processes,
            ticks_per_second: ticks_per_second(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            marks: Vec::new(),
        };
        watch.mark(phase);
        watch
    }

    /// Ends the current phase and begins `phase` (or, for the last call, ends the run).
    pub fn mark(&mut self, phase: &'static str) {
        let ticks = self.processes.iter().map(|(_, pid)| ticks(*pid)).collect();
        self.marks.push(Mark {
            phase,
            at: Instant::now(),
            ticks,
            machine: machine_ticks(),
        });
    }

    /// The summary lines: per process, CPU seconds over the run, its share of the listed
    /// processes' CPU and of the machine's, and its CPU seconds per phase.
    pub fn summary(&self) -> Vec<String> {
        let (Some(first), Some(last)) = (self.marks.first(), self.marks.last()) else {
            return Vec::new();
        };
        if self.processes.is_empty() {
            return vec!["CPU per process: not measured (pass --pid or --service-pid NAME=PID)".to_owned()];
        }
        let seconds = |from: &Mark, to: &Mark, i: usize| self.seconds(from, to, i);
        let machine = |from: &Mark, to: &Mark| -> f64 {
            (to.at.duration_since(from.at).as_secs_f64() * self.cores as f64).max(1e-9)
        };
        let run: Vec<Option<f64>> = (0..self.processes.len()).map(|i| seconds(first, last, i)).collect();
        let listed: f64 = run.iter().flatten().sum();
        let wall = last.at.duration_since(first.at).as_secs_f64();
        let mut lines = vec![format!(
            "CPU per process over the run ({wall:.1} s × {} cores = {:.0} CPU-s of the machine):",
            self.cores,
            machine(first, last)
        )];
        for (i, ((name, pid), cpu)) in self.processes.iter().zip(&run).enumerate() {
            let Some(cpu) = cpu else {
                lines.push(format!("  {name} (pid {pid}): not measured (the process is gone)"));
                continue;
            };
            let phases: Vec<String> = self
                .marks
                .windows(2)
                .map(|w| match seconds(&w[0], &w[1], i) {
                    Some(s) => format!("{} {s:.1} s ({:.1} %)", w[0].phase, 100.0 * s / machine(&w[0], &w[1])),
                    None => format!("{} ?", w[0].phase),
                })
                .collect();
            lines.push(format!(
                "  {name} (pid {pid}): {cpu:.1} CPU-s = {:.1} % of the listed processes', {:.2} % of the machine's; per phase (% of the machine): {}",
                100.0 * cpu / listed.max(1e-9),
                100.0 * cpu / machine(first, last),
                phases.join(", ")
            ));
        }
        let idle: Vec<String> = self
            .marks
            .windows(2)
            .map(|w| match idle_share(&w[0], &w[1]) {
                Some(share) => format!("{} {:.0} %", w[0].phase, 100.0 * share),
                None => format!("{} ?", w[0].phase),
            })
            .collect();
        lines.push(format!("  the machine idle, per phase: {}", idle.join(", ")));
        lines
    }

    /// The `i`th process's CPU seconds between two marks (`None`: unreadable at either).
    fn seconds(&self, from: &Mark, to: &Mark, i: usize) -> Option<f64> {
        let (a, b) = (from.ticks.get(i).copied()??, to.ticks.get(i).copied()??);
        Some(b.saturating_sub(a) as f64 / self.ticks_per_second)
    }

    /// Each process's CPU per item (µs) over the phase that begins at the mark named `phase`,
    /// and the machine's idle share then: "amba dev 163 µs, ...; machine idle 21 %".
    pub fn per_item(&self, phase: &str, items: u64) -> Option<String> {
        let at = self.marks.iter().position(|m| m.phase == phase)?;
        let (from, to) = (self.marks.get(at)?, self.marks.get(at + 1)?);
        let per: Vec<String> = self
            .processes
            .iter()
            .enumerate()
            .map(|(i, (name, _))| match self.seconds(from, to, i) {
                Some(cpu) if items > 0 => format!("{name} {:.0} µs", 1e6 * cpu / items as f64),
                _ => format!("{name} ?"),
            })
            .collect();
        let idle = idle_share(from, to).map_or_else(|| "?".to_owned(), |s| format!("{:.0} %", 100.0 * s));
        Some(format!("{}; machine idle {idle}", per.join(", ")))
    }
}

/// The machine's idle share between two marks.
fn idle_share(from: &Mark, to: &Mark) -> Option<f64> {
    let ((idle_a, total_a), (idle_b, total_b)) = (from.machine?, to.machine?);
    let total = total_b.checked_sub(total_a).filter(|t| *t > 0)?;
    Some(idle_b.saturating_sub(idle_a) as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stat_lines_parse_past_a_command_name_with_spaces_and_parentheses() {
        let line = "1234 (amba (serve) x) S 1 1234 1234 0 -1 4194560 2620 0 0 0 \
                    1500 250 0 0 20 0 12 0 98765 1234567 890 18446744073709551615 1 1 0 0 0 0 0 4096 17442 0 0 0 17 3 0 0 0 0 0";
        assert_eq!(parse_stat(line), Some(1750));
        assert_eq!(parse_stat("1 (init) S 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn the_machine_line_counts_iowait_as_idle() {
        let stat = "cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 50 2 25 400 20 0 0 0 0 0\n";
        assert_eq!(parse_machine(stat), Some((845, 1000)));
        assert_eq!(parse_machine("intr 1 2 3"), None);
        assert!(machine_ticks().is_some_and(|(idle, total)| idle <= total && total > 0));
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(ticks(std::process::id()).is_some());
        assert!(ticks_per_second() > 0.0);
    }

    #[test]
    fn the_summary_splits_cpu_by_process_and_phase() {
        let start = Instant::now();
        let mark = |phase, secs, ticks: Vec<Option<u64>>, machine| Mark {
            phase,
            at: start + Duration::from_secs(secs),
            ticks,
            machine,
        };
        let watch = Watch {
            processes: vec![
                ("edge".to_owned(), 1),
                ("notification".to_owned(), 2),
                ("gone".to_owned(), 3),
            ],
            ticks_per_second: 100.0,
            cores: 2,
            marks: vec![
                mark("setup", 0, vec![Some(0), Some(0), Some(0)], Some((0, 0))),
                mark("streaming", 10, vec![Some(300), Some(100), None], Some((1_200, 2_000))),
                mark("end", 20, vec![Some(1_500), Some(500), None], None),
            ],
        };
        let lines = watch.summary();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(lines[0].contains("20.0 s × 2 cores = 40 CPU-s"), "{}", lines[0]);
        assert!(
            lines[1]
                .starts_with("  edge (pid 1): 15.0 CPU-s = 75.0 % of the listed processes', 37.50 % of the machine's"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].ends_with("setup 3.0 s (15.0 %), streaming 12.0 s (60.0 %)"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("5.0 CPU-s = 25.0 %"), "{}", lines[2]);
        assert!(lines[3].contains("not measured"), "{}", lines[3]);
        assert_eq!(lines[4], "  the machine idle, per phase: setup 60 %, streaming ?");
        // 12 CPU-s of the edge over 4,000 items: 3,000 µs each.
        assert_eq!(
            watch.per_item("streaming", 4_000).as_deref(),
            Some("edge 3000 µs, notification 1000 µs, gone ?; machine idle ?")
        );
        assert_eq!(
            watch.per_item("setup", 0).as_deref(),
            Some("edge ?, notification ?, gone ?; machine idle 60 %")
        );
        assert_eq!(watch.per_item("end", 1), None, "the last mark begins no phase");
    }
}
