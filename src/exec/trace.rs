//! Report mode: which files a step's processes opened and executed, seen through seccomp user
//! notification, unprivileged.
//!
//! # How
//! Just before the step's command runs, its process (in the child, between fork and exec)
//! sets `no_new_privs` and installs a seccomp filter that hands every `open`, `openat`,
//! `openat2`, `creat`, `execve` and `execveat` to a supervisor; the filter's listener
//! descriptor travels to cairn over a socket pair (`SCM_RIGHTS`). A supervisor thread in cairn
//! receives each call, reads its path from `/proc/PID/mem` (and `openat2`'s flags), resolves a
//! relative path against `/proc/PID/cwd` or `/proc/PID/fd/DIRFD`, records it, and lets the call
//! go on unchanged (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`). The filter is inherited by everything
//! the step starts. `io_uring_setup` fails with `ENOSYS`, since io_uring opens would bypass
//! the filter (tools fall back to plain system calls).
//!
//! # What it is not
//! A policy: the kernel's own header warns that `CONTINUE` is racy on pointer arguments. It
//! reports; Landlock enforces (`strict` stacks both). A notification is an attempt, not a
//! result: the BEAM probes dozens of absent `X.beam` paths per compile. What an attempt means
//! (a read of a file that exists, a write, a probe) is decided afterwards by the caller.
//!
//! # Cost
//! About 25 µs per trapped call (a context switch to the supervisor and back): `mix compile`
//! takes 15–30 % longer, which is why it is a mode to adopt a project with, not the default.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a traced call did with its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Opened for reading only.
    Read,
    /// Opened for writing, created or truncated.
    Write,
    /// Executed.
    Exec,
    /// Connected over IPv4 or IPv6 to this port (`path` holds `ADDRESS:PORT`).
    Connect(u16),
    /// Looked at (`stat`, `access`): traced only when asked ([`Tracer::start_with_stats`]).
    Stat,
}

/// One traced call: an absolute path (not yet normalised) and what was done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub path: PathBuf,
    pub kind: Kind,
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

#[cfg(target_arch = "x86_64")]
const TRAPPED: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_creat,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_connect,
];
#[cfg(target_arch = "aarch64")]
const TRAPPED: &[libc::c_long] =
    &[libc::SYS_openat, libc::SYS_openat2, libc::SYS_execve, libc::SYS_execveat, libc::SYS_connect];

/// The stat family, traced for toolchain probes (a shell finds a command on `PATH` by
/// `stat`, so a tool appearing earlier on `PATH` shows only there).
#[cfg(target_arch = "x86_64")]
const STATS: &[libc::c_long] = &[
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
];
#[cfg(target_arch = "aarch64")]
const STATS: &[libc::c_long] = &[libc::SYS_newfstatat, libc::SYS_statx, libc::SYS_faccessat, libc::SYS_faccessat2];

/// Whether report mode can work here: Linux 5.5 or later with seccomp (`CAIRN_SECCOMP=off`
/// pretends it cannot, to see how a build degrades).
pub fn available() -> bool {
    if std::env::var_os("CAIRN_SECCOMP").is_some_and(|v| v == "off") {
        return false;
    }
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes three u16 into the buffer we pass.
    let mut sizes = [0u16; 3];
    let r = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_GET_NOTIF_SIZES, 0, sizes.as_mut_ptr()) };
    r == 0 && cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
}

/// The BPF program: on this architecture, trapped calls go to the supervisor, io_uring is
/// refused, everything else is allowed.
fn program(trapped: &[libc::c_long]) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let n = trapped.len();
    let (allow, notify) = (n + 4, n + 5);
    let mut f = vec![
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 0, (allow - 2) as u8, AUDIT_ARCH),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
    ];
    for (i, nr) in trapped.iter().enumerate() {
        f.push(op(JEQ_K, (notify - (3 + i) - 1) as u8, 0, *nr as u32));
    }
    f.push(op(JEQ_K, 2, 0, libc::SYS_io_uring_setup as u32));
    f.push(op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    f.push(op(RET_K, 0, 0, libc::SECCOMP_RET_USER_NOTIF));
    f.push(op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    f
}

/// A trace being set up or running: made before the step's process is spawned, its
/// [`Tracer::hook`] installed in the child, [`Tracer::finish`] called once the step ended.
pub struct Tracer {
    /// The child's end of the socket pair (dropped in the parent once the child is spawned).
    child_end: Option<OwnedFd>,
    /// The filter, kept alive (and in place) for the child to install.
    _filter: Box<[libc::sock_filter]>,
    prog: Box<libc::sock_fprog>,
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<Vec<Access>>>,
}

impl Tracer {
    /// Set up a trace and start its supervisor (which waits for the child's listener).
    pub fn start() -> io::Result<Tracer> {
        Tracer::start_traps(TRAPPED.to_vec())
    }

    /// [`Tracer::start`], the stat family too.
    pub fn start_with_stats() -> io::Result<Tracer> {
        Tracer::start_traps(TRAPPED.iter().chain(STATS).copied().collect())
    }

    fn start_traps(trapped: Vec<libc::c_long>) -> io::Result<Tracer> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair writes two descriptors into the array we pass.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just made and are ours alone.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut filter = program(&trapped).into_boxed_slice();
        let prog = Box::new(libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() });
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let supervisor = std::thread::Builder::new().name("cairn-trace".into()).spawn(move || {
            match recv_fd(ours.as_raw_fd()) {
                // SAFETY: the descriptor came with SCM_RIGHTS and is ours now.
                Some(fd) => supervise(unsafe { OwnedFd::from_raw_fd(fd) }, &stop2),
                None => Vec::new(), // the child failed before handing it over
            }
        })?;
        Ok(Tracer { child_end: Some(theirs), _filter: filter, prog, stop, supervisor: Some(supervisor) })
    }

    /// The hook to run in the child between fork and exec: only system calls, no allocation.
    pub fn hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let sock = self.child_end.as_ref().map_or(-1, |f| f.as_raw_fd());
        let prog = &*self.prog as *const libc::sock_fprog as usize;
        move || {
            // SAFETY: prctl and seccomp take plain values and a pointer to the filter, which
            // the parent keeps alive (and unmoved, boxed) until the child has exec'd.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let fd = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    prog as *const libc::sock_fprog,
                );
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let sent = send_fd(sock, fd as RawFd);
                libc::close(fd as RawFd);
                sent
            }
        }
    }

    /// Once the child is spawned (or failed to be): the parent lets go of the child's end.
    pub fn spawned(&mut self) {
        self.child_end = None;
    }

    /// Stop supervising (the step has ended) and return what it opened and executed, in order.
    pub fn finish(mut self) -> Vec<Access> {
        self.child_end = None;
        self.stop.store(true, Ordering::SeqCst);
        self.supervisor.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

/// Send one descriptor over a Unix socket (async-signal-safe: stack buffers only).
unsafe fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 8];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
    let c = libc::CMSG_FIRSTHDR(&msg);
    (*c).cmsg_level = libc::SOL_SOCKET;
    (*c).cmsg_type = libc::SCM_RIGHTS;
    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    if libc::sendmsg(sock, &msg, 0) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receive one descriptor (close-on-exec); `None` when the other end closed without sending.
fn recv_fd(sock: RawFd) -> Option<RawFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 8];
    // SAFETY: a zeroed msghdr pointing at our stack buffers, then reading the one control
    // message recvmsg filled in, if any.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                return None;
            }
            break;
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>()))
    }
}

/// Serve notifications until every traced process is gone or `stop` is set.
fn supervise(listener: OwnedFd, stop: &AtomicBool) -> Vec<Access> {
    let fd = listener.as_raw_fd();
    let mut out = Vec::new();
    let mut mem: HashMap<u32, File> = HashMap::new();
    loop {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, 50) };
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
        if r <= 0 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            continue;
        }
        if pfd.revents & libc::POLLIN == 0 {
            break; // POLLHUP: no process uses the filter any more
        }
        // SAFETY: the kernel fills the zeroed notification we pass.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            continue; // interrupted, or the caller died meanwhile
        }
        if let Some(a) = describe(fd, &req, &mut mem) {
            out.push(a);
        }
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: a response for the notification we received; failure means the caller is gone.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
    out
}

/// What one notification opened or executed, read from the caller's memory.
fn describe(listener: RawFd, req: &libc::seccomp_notif, mem: &mut HashMap<u32, File>) -> Option<Access> {
    let a = req.data.args;
    let nr = req.data.nr as libc::c_long;
    let (dirfd, ptr, flags, exec) = match nr {
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open => (libc::AT_FDCWD, a[0], a[1], false),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_creat => (libc::AT_FDCWD, a[0], (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64, false),
        libc::SYS_openat => (a[0] as i32, a[1], a[2], false),
        libc::SYS_openat2 => {
            let mut b = [0u8; 8];
            read_mem(mem, req.pid, a[2], &mut b)?;
            (a[0] as i32, a[1], u64::from_ne_bytes(b), false)
        }
        libc::SYS_execve => (libc::AT_FDCWD, a[0], 0, true),
        libc::SYS_execveat => (a[0] as i32, a[1], 0, true),
        libc::SYS_connect => return connect(mem, req.pid, a[1], a[2]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_stat | libc::SYS_lstat | libc::SYS_access => return stat(mem, req, libc::AT_FDCWD, a[0]),
        libc::SYS_newfstatat | libc::SYS_statx | libc::SYS_faccessat | libc::SYS_faccessat2 => {
            return stat(mem, req, a[0] as i32, a[1])
        }
        _ => return None,
    };
    let flags = flags as i32;
    if !exec && flags & libc::O_PATH != 0 {
        return None; // names a file without opening its contents
    }
    let path = absolute(req.pid, dirfd, read_path(mem, req.pid, ptr)?)?;
    // The caller may have died and its pid been reused while we read: then what we read is
    // not its.
    // SAFETY: NOTIF_ID_VALID reads the u64 id we pass.
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) } != 0 {
        return None;
    }
    let kind = if exec {
        Kind::Exec
    } else if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_CREAT | libc::O_TRUNC) != 0 {
        Kind::Write
    } else {
        Kind::Read
    };
    Some(Access { path, kind })
}

/// `path` as process `pid` meant it: relative ones against its working directory or the
/// directory `dirfd` names.
fn absolute(pid: u32, dirfd: i32, path: PathBuf) -> Option<PathBuf> {
    if path.is_absolute() {
        return Some(path);
    }
    let base = if dirfd == libc::AT_FDCWD { format!("/proc/{pid}/cwd") } else { format!("/proc/{pid}/fd/{dirfd}") };
    Some(std::fs::read_link(base).ok()?.join(path))
}

/// A `stat`-like call on a path (an empty path, `fstat` by descriptor, is no path).
fn stat(mem: &mut HashMap<u32, File>, req: &libc::seccomp_notif, dirfd: i32, ptr: u64) -> Option<Access> {
    let path = absolute(req.pid, dirfd, read_path(mem, req.pid, ptr)?)?;
    Some(Access { path, kind: Kind::Stat })
}

/// An IPv4 or IPv6 `connect` (other families are not the network).
fn connect(mem: &mut HashMap<u32, File>, pid: u32, addr: u64, len: u64) -> Option<Access> {
    let mut b = [0u8; 28];
    let n = (len as usize).min(b.len());
    read_mem(mem, pid, addr, &mut b[..n])?;
    let family = u16::from_ne_bytes([b[0], b[1]]) as i32;
    let port = u16::from_be_bytes([b[2], b[3]]);
    let ip: std::net::IpAddr = match family {
        libc::AF_INET if n >= 8 => std::net::Ipv4Addr::new(b[4], b[5], b[6], b[7]).into(),
        libc::AF_INET6 if n >= 24 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).ok()?).into(),
        _ => return None,
    };
    Some(Access { path: std::net::SocketAddr::new(ip, port).to_string().into(), kind: Kind::Connect(port) })
}

/// Read `buf.len()` bytes at `addr` in process `pid`.
fn read_mem(mem: &mut HashMap<u32, File>, pid: u32, addr: u64, buf: &mut [u8]) -> Option<()> {
    for attempt in 0..2 {
        if attempt == 1 || !mem.contains_key(&pid) {
            if mem.len() > 256 {
                mem.clear();
            }
            mem.insert(pid, File::open(format!("/proc/{pid}/mem")).ok()?);
        }
        if mem[&pid].read_exact_at(buf, addr).is_ok() {
            return Some(());
        }
    }
    None
}

/// Read a NUL-terminated path at `addr` in process `pid` (page by page, at most `PATH_MAX`).
fn read_path(mem: &mut HashMap<u32, File>, pid: u32, addr: u64) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < libc::PATH_MAX as usize {
        let room = (4096 - (at % 4096)) as usize;
        let mut chunk = vec![0u8; room];
        read_mem(mem, pid, at, &mut chunk)?;
        if let Some(end) = memchr::memchr(0, &chunk) {
            out.extend_from_slice(&chunk[..end]);
            return (!out.is_empty()).then(|| PathBuf::from(std::ffi::OsString::from_vec(out)));
        }
        out.extend_from_slice(&chunk);
        at += room as u64;
    }
    None
}

/// `.` and `..` taken out of a path, without resolving links.
fn resolve_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A traced path as the file it names: `.` and `..` taken out, and the directory holding it
/// resolved through links (mix reads `priv/` through `_build/*/lib/APP/priv`; what it reads is
/// `priv/`).
pub fn resolve(path: &Path) -> PathBuf {
    let out = resolve_lexically(path);
    match (out.parent().and_then(|p| p.canonicalize().ok()), out.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => out,
    }
}

/// Whether git ignores a workspace path, by the `.gitignore` files on its way and
/// `.git/info/exclude` (each read once).
pub struct GitIgnored {
    root: PathBuf,
    on: bool,
    dirs: HashMap<PathBuf, Option<ignore::gitignore::Gitignore>>,
}

impl GitIgnored {
    /// `on: false` (the pipeline's `gitignore: false`): nothing counts as ignored, since
    /// ignored files can then be inputs.
    pub fn new(root: &Path, on: bool) -> GitIgnored {
        GitIgnored { root: root.to_path_buf(), on, dirs: HashMap::new() }
    }

    /// `rel`: a file, relative to the root.
    pub fn is_ignored(&mut self, rel: &str) -> bool {
        if !self.on {
            return false;
        }
        let mut verdict = false;
        let mut dir = self.root.clone();
        let full = self.root.join(rel);
        let parts: Vec<&str> = rel.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let m = self.dirs.entry(dir.clone()).or_insert_with(|| {
                let mut b = ignore::gitignore::GitignoreBuilder::new(&dir);
                let mut any = false;
                for f in [dir.join(".gitignore"), dir.join(".git/info/exclude")] {
                    if f.is_file() {
                        any |= b.add(f).is_none();
                    }
                }
                any.then(|| b.build().ok()).flatten()
            });
            if let Some(m) = m {
                match m.matched_path_or_any_parents(&full, false) {
                    ignore::Match::Ignore(_) => verdict = true,
                    ignore::Match::Whitelist(_) => verdict = false,
                    ignore::Match::None => {}
                }
            }
            if i + 1 < parts.len() {
                dir.push(part);
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_jumps_land_on_the_right_returns() {
        let f = program(TRAPPED);
        let n = TRAPPED.len();
        // Arch mismatch skips to ALLOW; every trapped number jumps to NOTIF; io_uring to ERRNO.
        assert_eq!(2 + f[1].jf as usize, n + 4);
        assert_eq!(f[n + 4].k, libc::SECCOMP_RET_ALLOW);
        for i in 0..n {
            assert_eq!(3 + i + 1 + f[3 + i].jt as usize, n + 5);
        }
        assert_eq!(f[n + 5].k, libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(3 + n + 1 + f[3 + n].jt as usize, n + 6);
        assert_eq!(f[n + 6].k & 0xffff, libc::ENOSYS as u32);
    }

    #[test]
    fn gitignore_files_on_the_way_decide() {
        let d = std::env::temp_dir().join(format!("cairn-gi-{}", std::process::id()));
        std::fs::create_dir_all(d.join("config/sub")).unwrap();
        std::fs::write(d.join(".gitignore"), "/config/local.exs\n*.log\n").unwrap();
        std::fs::write(d.join("config/sub/.gitignore"), "!keep.log\n").unwrap();
        let mut g = GitIgnored::new(&d, true);
        assert!(g.is_ignored("config/local.exs"));
        assert!(!g.is_ignored("config/config.exs"));
        assert!(g.is_ignored("a/b.log"));
        assert!(!g.is_ignored("config/sub/keep.log"), "a deeper file re-includes");
        assert!(!GitIgnored::new(&d, false).is_ignored("config/local.exs"));
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(resolve(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
