//! Shared by the integration tests (the `tests` crate and damon-user's own): whether a test that
//! needs the real kernel can run here.

/// Outside CI a test that cannot run prints why and passes vacuously; with `CI=true` that would
/// hide a broken pipeline, so it fails instead.
pub fn privileged(test: &str) -> bool {
    match crate::check::require_monitoring() {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("{test}: privileged test cannot run under CI=true: {why:#}"),
        Err(why) => {
            eprintln!("skipping {test}: {why:#}");
            false
        }
    }
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
