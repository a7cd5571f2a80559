//! Where torhaus keeps state that must survive restarts (the local CA, later ACME accounts).

use std::ffi::OsString;
use std::path::PathBuf;

/// The directory for persistent state, first match wins:
/// `$TORHAUS_STATE_DIR`, `$XDG_DATA_HOME/torhaus`, `$HOME/.local/share/torhaus`,
/// `/var/lib/torhaus`. Empty variables count as unset, and a relative `$XDG_DATA_HOME` is
/// ignored as the XDG base directory specification requires.
pub fn default_state_dir() -> PathBuf {
    state_dir_from(|name| std::env::var_os(name))
}

fn state_dir_from(lookup: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let non_empty = |name: &str| {
        lookup(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(explicit) = non_empty("TORHAUS_STATE_DIR") {
        return explicit;
    }
    if let Some(data_home) = non_empty("XDG_DATA_HOME").filter(|path| path.is_absolute()) {
        return data_home.join("torhaus");
    }
    if let Some(home) = non_empty("HOME") {
        return home.join(".local/share/torhaus");
    }
    PathBuf::from("/var/lib/torhaus")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(vars: &[(&str, &str)]) -> PathBuf {
        state_dir_from(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        })
    }

    #[test]
    fn explicit_variable_wins() {
        let dir = resolve(&[
            ("TORHAUS_STATE_DIR", "/srv/torhaus"),
            ("XDG_DATA_HOME", "/home/a/.data"),
            ("HOME", "/home/a"),
        ]);
        assert_eq!(dir, PathBuf::from("/srv/torhaus"));
    }

    #[test]
    fn xdg_data_home_before_home() {
        let dir = resolve(&[("XDG_DATA_HOME", "/home/a/.data"), ("HOME", "/home/a")]);
        assert_eq!(dir, PathBuf::from("/home/a/.data/torhaus"));
    }

    #[test]
    fn relative_xdg_data_home_and_empty_values_are_ignored() {
        let dir = resolve(&[
            ("TORHAUS_STATE_DIR", ""),
            ("XDG_DATA_HOME", "relative/data"),
            ("HOME", "/home/a"),
        ]);
        assert_eq!(dir, PathBuf::from("/home/a/.local/share/torhaus"));
    }

    #[test]
    fn falls_back_to_var_lib() {
        assert_eq!(resolve(&[("HOME", "")]), PathBuf::from("/var/lib/torhaus"));
    }
}
