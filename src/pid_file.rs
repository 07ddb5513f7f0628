//! `server.pid_file`: where the pid of the process that serves is kept, so
//! that `ssegate reload` (and a service manager's `PIDFile=`) can find it.
//!
//! With `--daemon`, pingora writes the file itself (after the fork, moving
//! an older file aside to `FILE.old`). Without it pingora writes nothing, so
//! `ssegate run` writes its own pid there once it holds its listening
//! sockets ([`write`]): a process started in the foreground, or by a test
//! harness, can be reloaded like a daemon.

use std::io;
use std::path::Path;

/// The pid in a pid file's text: one decimal number, surrounding
/// whitespace allowed (pingora writes `"<pid>\n"`). `None` for anything else,
/// an empty file included (pingora creates the file before writing it).
pub fn parse(text: &str) -> Option<u32> {
    // kill(2) takes a positive i32: 0 and negative numbers name process
    // groups, which a pid file never means.
    let pid: i32 = text.trim().parse().ok()?;
    u32::try_from(pid).ok().filter(|p| *p > 0)
}

/// Reads and parses the pid file at `path`.
pub fn read(path: &Path) -> io::Result<u32> {
    let text = std::fs::read_to_string(path)?;
    parse(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{text:?} is not a process id"),
        )
    })
}

/// Writes `pid` to `path`, replacing it whole: the text goes to a file
/// beside it that is then renamed over it, so that a reader polling the
/// file (`ssegate reload`) never sees it empty or half written.
pub fn write(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_pingora_and_we_write() {
        assert_eq!(parse("1234\n"), Some(1234));
        assert_eq!(parse(" 7 "), Some(7));
        for bad in ["", "\n", "0", "-1", "12a", "1 2", "99999999999"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn write_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("ssegate-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.pid");
        std::fs::write(&path, "999999 and junk that is longer").unwrap();
        write(&path, 42).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "42\n");
        assert_eq!(read(&path).unwrap(), 42);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
        let err = write(&dir.join("missing/p.pid"), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
