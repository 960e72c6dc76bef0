//! Reading a guest's serial console: the verdict line decides; an Oops means "boot again".

use super::initramfs::{FAILED, RESULT_FAIL, RESULT_PASS};

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The failed steps (empty when the guest said FAIL without naming one).
    Fail(Vec<String>),
    /// The kernel oopsed or the console ended without a verdict: worth one more boot.
    Broken(String),
}

pub fn verdict(console: &str) -> Verdict {
    if let Some(line) = console.lines().find(|l| l.contains("Oops") || l.contains("Kernel panic")) {
        return Verdict::Broken(line.trim().to_owned());
    }
    let failed: Vec<String> = console
        .lines()
        .filter_map(|l| l.split_once(FAILED).map(|(_, step)| step.trim().to_owned()))
        .collect();
    if console.lines().any(|l| l.trim_end().ends_with(RESULT_PASS)) && failed.is_empty() {
        Verdict::Pass
    } else if console.lines().any(|l| l.trim_end().ends_with(RESULT_FAIL)) || !failed.is_empty() {
        Verdict::Fail(failed)
    } else {
        Verdict::Broken("the console ended without a verdict".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_verdict_line_passes_a_guest() {
        assert_eq!(verdict("boot\nUDAMON-VM-RESULT: PASS\n"), Verdict::Pass);
        assert_eq!(
            verdict("UDAMON-VM-FAILED: /tests/walker\nUDAMON-VM-RESULT: FAIL\n"),
            Verdict::Fail(vec!["/tests/walker".into()])
        );
        assert!(matches!(verdict("booting...\n"), Verdict::Broken(_)));
        assert!(matches!(
            verdict("[ 1.0] Oops: int3\nUDAMON-VM-RESULT: PASS\n"),
            Verdict::Broken(_)
        ));
    }
}
