fn main() {
    eprintln!("mongosim: not available yet");
    std::process::exit(2);
}
