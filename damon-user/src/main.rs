//! `udamon`: see `damon_user::cli`.

fn main() -> std::process::ExitCode {
    damon_user::cli::main()
}
