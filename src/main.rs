fn main() {
    std::process::exit(vault::cli::main());
}
