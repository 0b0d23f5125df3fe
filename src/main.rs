fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cairn::run())
}
