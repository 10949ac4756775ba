//! Every leaf command's `--help` shows an example: shared by the tests of `vouch` and
//! `vouch-agent` (`#[path]` modules).

/// The leaf commands under `command` (named by their path) whose after-help has no
/// `Example`.
pub fn leaves_without_an_example(command: &clap::Command) -> Vec<String> {
    fn walk(command: &clap::Command, path: &mut Vec<String>, missing: &mut Vec<String>) {
        let subcommands: Vec<&clap::Command> = command.get_subcommands().collect();
        if subcommands.is_empty() {
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            if !help.contains("Example") {
                missing.push(path.join(" "));
            }
        }
        for sub in subcommands {
            path.push(sub.get_name().to_owned());
            walk(sub, path, missing);
            path.pop();
        }
    }
    let mut missing = Vec::new();
    walk(
        command,
        &mut vec![command.get_name().to_owned()],
        &mut missing,
    );
    missing
}
