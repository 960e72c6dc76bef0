//! What to say when the kernel refuses a program: one line with the errno and the verifier's
//! last word; the verifier's whole log, which can run to megabytes, goes to a file the line
//! names, for a bug report.

use std::io::Write as _;

use aya::programs::ProgramError;

/// `result` of loading `program`, with a refusal described as `describe` does.
pub fn load(result: Result<(), ProgramError>, program: &str, what: &str) -> anyhow::Result<()> {
    result.map_err(|err| anyhow::anyhow!("cannot load {what}: {}", describe(&err, program)))
}

/// One line for a program error; for a verifier refusal, where its whole log went.
pub fn describe(err: &ProgramError, program: &str) -> String {
    if let ProgramError::LoadError { io_error, verifier_log } = err {
        return refusal(io_error, &verifier_log.to_string(), program);
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn refusal(io_error: &std::io::Error, log: &str, program: &str) -> String {
    let Some(last) = log.lines().rev().find(|line| !line.trim().is_empty()) else {
        return format!("refused ({io_error})");
    };
    // A one-line log is all in the message.
    let longer = log.lines().filter(|line| !line.trim().is_empty()).nth(1).is_some();
    let kept = match longer.then(|| save(log, program)).flatten() {
        Some(path) => format!("; the verifier's log is in {}", path.display()),
        None => String::new(),
    };
    format!("refused ({io_error}): {}{kept}", last.trim())
}

/// Writes `log` to a new file of this process in the temporary directory (never through an
/// existing name, which another user could have planted).
fn save(log: &str, program: &str) -> Option<std::path::PathBuf> {
    let path =
        std::env::temp_dir().join(format!("udamon-verifier-{program}-{}.log", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).ok()?;
    file.write_all(log.as_bytes()).ok()?;
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn a_refusal_is_one_line_and_its_long_log_is_kept() {
        let e2big = std::io::Error::from_raw_os_error(libc::E2BIG);
        let log = "0: R1=ctx()\n".repeat(10_000) + "processed 1000001 insns (limit 1000000)\n\n";
        let said = refusal(&e2big, &log, "test_refusal");
        let (head, path) = said.split_once("; the verifier's log is in ").expect(&said);
        assert_eq!(
            head,
            "refused (Argument list too long (os error 7)): processed 1000001 insns (limit 1000000)"
        );
        assert_eq!(std::fs::read_to_string(path).unwrap(), log);
        std::fs::remove_file(path).unwrap();
        let short = refusal(&e2big, "unknown func bpf_loop#181\n", "test_refusal");
        assert_eq!(
            short,
            "refused (Argument list too long (os error 7)): unknown func bpf_loop#181"
        );
        assert_eq!(refusal(&e2big, "", "x"), "refused (Argument list too long (os error 7))");
    }
}
