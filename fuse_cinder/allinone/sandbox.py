#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.
"""Host pieces of a throw-away deployment: a private tgtd, a bindfs mount.

Used by the all-in-one launcher and by the multi-process test. Every
daemon runs in its own session: a Ctrl-C in the terminal then reaches
only the launcher, which stops things in order (Cinder, then the targets
and tgtd, then the mount) instead of all of them dying at once with
targets still open on the mount.

Nothing here imports Cinder: the launcher must be able to patch Cinder
before anything loads it.
"""

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from typing import Any
from typing import NoReturn
from typing import Self
from typing import TypedDict
from typing import TypeVar

from fuse_cinder import mount_table
from fuse_cinder.targets import tgtd_mgmt

#: Ports a private tgtd picks from unless told otherwise.
CONTROL_PORTS = range(41, 50)
PORTAL_PORTS = range(13281, 13290)
TGT_BINARIES = ('tgtd', 'tgtadm', 'tgt-admin')
#: How tgtd runs here, as etc/systemd/tgt.service.d/fuse-cinder.conf
#: makes the host's tgt.service run it (a unit test keeps them equal).
TGTD_ARGS = ('-t', '4')
TGTD_ENV = {'GLIBC_TUNABLES': 'glibc.malloc.mmap_threshold=4194304:'
                              'glibc.malloc.trim_threshold=268435456'}

_T = TypeVar('_T')


class SandboxError(RuntimeError):
    """A piece of the deployment could not be started."""


def wait_for(predicate: Callable[[], _T], timeout: float,
             interval: float = 0.1) -> _T:
    """Poll ``predicate`` until it is true or ``timeout`` s have passed."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)


def missing_programs(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def tcp_port_free(port: int, host: str = '127.0.0.1') -> bool:
    """Whether ``port`` can be bound (TIME_WAIT does not make it busy).

    Cinder's API server sets SO_REUSEPORT, so two of them would share a
    port silently: a busy port must be seen before it is handed out.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0


def free_port(ports: Iterable[int], host: str = '127.0.0.1') -> int | None:
    """The first free port of ``ports``, or None."""
    return next((p for p in ports if tcp_port_free(p, host)), None)


# -- mounts ----------------------------------------------------------------

def mounts() -> list[tuple[str, str]]:
    """[(mount point, fs type)] from the kernel; never touches a mount."""
    with open('/proc/self/mounts') as f:
        return [(e.mount_point, e.fs_type)
                for e in mount_table.parse_mounts(f.read())]


def is_mounted(path: str) -> bool:
    path = os.path.abspath(path)
    return any(point == path for point, _fs in mounts())


def mount_of(path: str) -> tuple[str, str]:
    """(mount point, fs type) holding ``path``, by name only.

    No stat or realpath: a hung FUSE daemon would block them.
    """
    entry = mount_table.find_mount(
        os.path.abspath(path),
        [mount_table.MountEntry('', point, fs_type, ())
         for point, fs_type in mounts()])
    return (entry.mount_point, entry.fs_type) if entry else ('/', '')


def is_fuse(path: str) -> bool:
    return mount_table.is_fuse_type(mount_of(path)[1])


class BindfsMount(object):
    """``bindfs -f -o allow_other BACKING MOUNTPOINT``, owned by us.

    allow_other lets root (cinder-volume) and tgtd open the files.
    """

    def __init__(self, backing: str, mountpoint: str,
                 log_path: str | None = None) -> None:
        self.backing = os.path.abspath(backing)
        self.mountpoint = os.path.abspath(mountpoint)
        self.log_path = log_path or os.devnull
        self.proc: subprocess.Popen[bytes] | None = None

    #: The FUSE daemon and what start() says when it is missing.
    program = 'bindfs'

    @property
    def pid(self) -> int | None:
        """The FUSE daemon's pid while it runs (for its peak memory)."""
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        """The daemon's command line; -f keeps it ours (its pid, its end)."""
        return ['bindfs', '-f', '-o', 'allow_other', self.backing,
                self.mountpoint]

    def start(self, timeout: float = 15) -> Self:
        if missing_programs(self.program):
            raise SandboxError('%s is not installed (see bindep.txt)'
                               % self.program)
        if is_mounted(self.mountpoint):
            raise SandboxError('%s is already a mount point' %
                               self.mountpoint)
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        with open(self.log_path, 'ab') as log:
            proc = self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for(lambda: (is_mounted(self.mountpoint) or
                                 proc.poll() is not None), timeout) \
                or not is_mounted(self.mountpoint):
            self.stop()
            raise SandboxError('%s did not mount %s (see %s)'
                               % (self.program, self.mountpoint,
                                  self.log_path))
        return self

    def kill(self) -> None:
        """SIGKILL the FUSE daemon: the mount stays, answering ENOTCONN."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15) -> None:
        """Unmount and end bindfs; lazily if something still holds it."""
        if is_mounted(self.mountpoint):
            res = subprocess.run(['umount', self.mountpoint],
                                 capture_output=True, timeout=60)
            if res.returncode != 0 and is_mounted(self.mountpoint):
                subprocess.run(['umount', '-l', self.mountpoint],
                               capture_output=True, timeout=60)
        if self.proc is not None:
            # bindfs -f exits by itself once unmounted.
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_session(self.proc.pid)
                self.proc.wait(timeout=10)
            self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ScratchMount(BindfsMount):
    """bindfs over ``BASE/backing`` at ``BASE/mnt``; volumes in volumes/.

    The backing directory may be a tmpfs of ``tmpfs_size`` (e.g. '48m'),
    so that a test fills the filesystem for real.
    """

    def __init__(self, base: str | os.PathLike[str],
                 tmpfs_size: str | None = None,
                 log_path: str | None = None) -> None:
        self.base = os.path.abspath(str(base))
        super().__init__(os.path.join(self.base, 'backing'),
                         os.path.join(self.base, 'mnt'), log_path)
        self.tmpfs_size = tmpfs_size

    @property
    def volumes_home(self) -> str:
        return os.path.join(self.mountpoint, 'volumes')

    def backing_path(self, name: str) -> str:
        return os.path.join(self.backing, 'volumes', name)

    def start(self, timeout: float = 15) -> Self:
        os.makedirs(self.backing, exist_ok=True)
        if self.tmpfs_size and not is_mounted(self.backing):
            subprocess.run(['mount', '-t', 'tmpfs', '-o',
                            'size=%s' % self.tmpfs_size, 'tmpfs',
                            self.backing], check=True)
        os.makedirs(os.path.join(self.backing, 'volumes'), exist_ok=True)
        return super().start(timeout)

    def stop(self, timeout: float = 15) -> None:
        super().stop(timeout)
        if self.tmpfs_size and is_mounted(self.backing):
            subprocess.run(['umount', '-l', self.backing],
                           capture_output=True, timeout=60)


class ScratchOverlayfs(ScratchMount):
    """fuse-overlayfs with ``BASE/backing`` as its upper directory.

    A FUSE filesystem that hides holes (no lseek) but reports st_blocks
    and copies on its server side (copy_file_range on its backing files).
    The lower directory is empty: every file is the upper one's.
    """

    program = 'fuse-overlayfs'

    def command(self) -> list[str]:
        lower = os.path.join(self.base, 'lower')
        work = os.path.join(self.base, 'work')
        for path in (lower, work):
            os.makedirs(path, exist_ok=True)
        return ['fuse-overlayfs', '-f', '-o', 'allow_other,lowerdir=%s,'
                'upperdir=%s,workdir=%s' % (lower, self.backing, work),
                self.mountpoint]


# -- tgtd ------------------------------------------------------------------

def tgtadm(control_port: int, *args: str,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run tgtadm on one tgtd; returns the CompletedProcess."""
    return subprocess.run(['tgtadm', '-C', str(control_port)] + list(args),
                          capture_output=True, text=True, timeout=timeout)


def tgtd_answers(control_port: int) -> bool:
    return tgtadm(control_port, '--mode', 'system', '--op',
                  'show').returncode == 0


def list_targets(control_port: int) -> dict[str, int]:
    """{iqn: tid} of one tgtd."""
    out = tgtadm(control_port, '--lld', 'iscsi', '--mode', 'target',
                 '--op', 'show').stdout
    return {name: target.tid
            for name, target in tgtd_mgmt.parse_targets(out).items()}


def list_accounts(control_port: int) -> list[str]:
    out = tgtadm(control_port, '--lld', 'iscsi', '--mode', 'account',
                 '--op', 'show').stdout
    return tgtd_mgmt.parse_accounts(out)


class Tgtd(object):
    """``tgtd -f`` on its own control port and loopback portal.

    Ports are picked among free ones unless given. tgtd falls back to
    0.0.0.0:3260 when its portal is taken, and a second tgtd may win the
    control port in a race, so a start only counts once this very process
    holds the control socket's lock and serves exactly our portal.
    """

    def __init__(self, control_port: int | None = None,
                 portal_port: int | None = None,
                 log_path: str | None = None,
                 control_ports: Sequence[int] = CONTROL_PORTS,
                 portal_ports: Sequence[int] = PORTAL_PORTS,
                 ip: str = '127.0.0.1', tuned: bool = True) -> None:
        self._want = (control_port, portal_port)
        # Untuned: as Debian's tgt.service starts it (the benchmark's
        # baseline for the drop-in).
        self.tuned = tuned
        self._ranges = (control_ports, portal_ports)
        self.ip = ip
        self.control_port = control_port
        self.portal_port = portal_port
        self.log_path = log_path or os.devnull
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ports(self) -> tuple[int, int]:
        """(control port, portal port), once start() has picked them."""
        if self.control_port is None or self.portal_port is None:
            raise SandboxError('tgtd was not started: it has no ports yet')
        return self.control_port, self.portal_port

    @property
    def portal(self) -> str:
        return '%s:%d' % (self.ip, self.ports[1])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _owns_control_port(self) -> bool:
        if (self.proc is None or self.proc.poll() is not None or
                self.control_port is None):
            return False
        lock = 'tgtd/socket.%d.lock' % self.control_port
        fd_dir = '/proc/%d/fd' % self.proc.pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            return False
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)).endswith(lock):
                    return True
            except OSError:
                pass
        return False

    def _portals(self) -> list[str]:
        out = tgtadm(self.ports[0], '--lld', 'iscsi', '--mode',
                     'portal', '--op', 'show').stdout
        return [line.split()[1].rsplit(',', 1)[0]
                for line in out.splitlines() if line.startswith('Portal:')]

    def _try(self, control_port: int, portal_port: int,
             timeout: float) -> bool:
        self.control_port, self.portal_port = control_port, portal_port
        args, env = ((TGTD_ARGS, dict(os.environ, **TGTD_ENV))
                     if self.tuned else ((), None))
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(
                ['tgtd', '-f', *args, '-C', str(control_port),
                 '--iscsi', 'portal=%s' % self.portal], env=env,
                stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        ready = wait_for(lambda: (not self.running or (
            self._owns_control_port() and tgtd_answers(control_port))),
            timeout, interval=0.05)
        if ready and self.running and self._portals() == [self.portal]:
            return True
        self._kill()
        return False

    def start(self, timeout: float = 10) -> Self:
        missing = missing_programs(*TGT_BINARIES)
        if missing:
            raise SandboxError('not installed: %s (see bindep.txt)'
                               % ', '.join(missing))
        want_control, want_portal = self._want
        controls = [want_control] if want_control else self._ranges[0]
        portals = [want_portal] if want_portal else self._ranges[1]
        for control in controls:
            if tgtd_answers(control):
                continue
            for portal in portals:
                if (tcp_port_free(portal, self.ip) and
                        self._try(control, portal, timeout)):
                    return self
                if tgtd_answers(control):
                    break
        raise SandboxError(
            'no private tgtd could start with control port %s and portal '
            '%s:%s (busy? see %s)'
            % (want_control or '%d-%d' % (controls[0], controls[-1]),
               self.ip, want_portal or '%d-%d' % (portals[0], portals[-1]),
               self.log_path))

    def targets(self) -> dict[str, int]:
        return list_targets(self.ports[0]) if self.running else {}

    def tgtadm(self, *args: str, check: bool = True) -> str:
        """Run tgtadm against this daemon; returns stdout."""
        control, _portal = self.ports
        res = tgtadm(control, *args)
        if check and res.returncode != 0:
            raise SandboxError('tgtadm -C %d %s failed (%d): %s'
                               % (control, ' '.join(args),
                                  res.returncode, res.stderr.strip()))
        return res.stdout

    def show(self) -> str:
        return self.tgtadm('--lld', 'iscsi', '--mode', 'target',
                           '--op', 'show')

    def url(self, iqn: str, lun: int = 1, user: str | None = None,
            secret: str | None = None) -> str:
        """A libiscsi/qemu URL of a LUN on this daemon."""
        auth = ''
        if user:
            auth = '%s%%%s@' % (user, secret) if secret else '%s@' % user
        return 'iscsi://%s%s/%s/%d' % (auth, self.portal, iqn, lun)

    def kill(self) -> None:
        """SIGKILL tgtd: targets and sessions vanish as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> Self:
        """Crash tgtd and start an empty one on the same ports."""
        control, portal = self.ports
        self.kill()
        if not self._try(control, portal, 10.0):
            raise SandboxError('tgtd did not come back on control port %d'
                               % control)
        return self

    def remove_targets(self) -> None:
        """Delete every target and CHAP account, sessions or not."""
        if not self._owns_control_port():
            return
        control, _portal = self.ports
        for iqn, tid in sorted(self.targets().items()):
            tgtadm(control, '--lld', 'iscsi', '--mode', 'target',
                   '--op', 'delete', '--force', '--tid', str(tid))
        for user in list_accounts(control):
            tgtadm(control, '--lld', 'iscsi', '--mode',
                   'account', '--op', 'delete', '--user', user)

    def stop(self) -> None:
        """Remove the targets, then stop tgtd (SIGKILL as a last resort)."""
        proc = self.proc
        if proc is not None and self._owns_control_port():
            self.remove_targets()
            tgtadm(self.ports[0], '--op', 'delete', '--mode', 'system')
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    def _kill(self) -> None:
        if self.proc is not None:
            kill_session(self.proc.pid)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NoDB(object):
    """Cinder's db for volumes that are in none: any read of one fails."""

    def volume_get(self, ctxt: Any, volume_id: str) -> NoReturn:
        # ctxt: a cinder RequestContext (untyped).
        # Imported here: the all-in-one imports this module before it
        # patches the process with eventlet, which Cinder needs first.
        from cinder import exception
        raise exception.VolumeNotFound(volume_id=volume_id)


# -- processes -------------------------------------------------------------

def proc_stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None.

    None once the process is gone. Index 0 is the state (field 3 of
    proc(5)), so field N of proc(5) is at index N - 3.
    """
    try:
        with open('/proc/%s/stat' % pid) as f:
            data = f.read()
    except OSError:
        return None
    # The command name, in parentheses, may itself hold spaces.
    return data[data.rindex(')') + 2:].split()


def _stat(pid: int | str) -> tuple[int, int] | None:
    """(ppid, session id) of a process, or None once it is gone."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    return int(fields[1]), int(fields[3])


def session_members(sid: int) -> list[int]:
    """Pids of the live processes of session ``sid``."""
    found = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            stat = _stat(name)
            if stat is not None and stat[1] == sid:
                found.append(int(name))
    return found


def descendants(pid: int) -> list[int]:
    """Pids of every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir('/proc'):
        if name.isdigit():
            stat = _stat(name)
            if stat is not None:
                children.setdefault(stat[0], []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_session(sid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Signal every process of a session we started; returns the pids.

    Children are started with start_new_session, so the session id is
    their pid and holds everything they spawned (timeout, tgt-admin,
    qemu-img, ...), even what was re-parented to init.
    """
    pids = session_members(sid)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


# -- an unprivileged service user with Cinder's root helper ----------------

#: PATH of a service, and what sudo keeps after the venv's bin directory.
SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
#: The rootwrap filters this checkout ships (README install step 4).
FILTERS_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))),
    'etc', 'cinder', 'rootwrap.d')


def write_new(path: str, text: str, mode: int = 0o644) -> str:
    """Create ``path`` (never an existing file) with ``text``."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode),
              'w') as f:
        f.write(text)
    return path


def make_user(stack: contextlib.ExitStack,
              prefix: str = 'fuse-cinder-t') -> pwd.struct_passwd:
    """A system user with no home, no shell and no group but its own.

    ``stack`` (a contextlib.ExitStack) deletes it again.
    """
    name = '%s%s' % (prefix, secrets.token_hex(3))
    # Registered first: a signal during useradd must not leave the user.
    stack.callback(subprocess.run, ['userdel', name], capture_output=True,
                   timeout=30)
    subprocess.run(['useradd', '--system', '--no-create-home', '--shell',
                    '/usr/sbin/nologin', name],
                   check=True, capture_output=True, timeout=30)
    return pwd.getpwnam(name)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def write_rootwrap_conf(path: str, venv_bin: str,
                        filters_path: str = FILTERS_PATH) -> str:
    """rootwrap.conf reading only ``filters_path``; returns ``path``."""
    return write_new(
        path, '[DEFAULT]\nfilters_path = %s\nexec_dirs = %s\n'
        'use_syslog = False\n'
        % (filters_path, ','.join([venv_bin] + SYSTEM_PATH.split(':'))))


def sudoers_path(user: pwd.struct_passwd) -> str:
    # No dot in the name: sudo skips files in sudoers.d that have one.
    return '/etc/sudoers.d/%s' % user.pw_name


def allow_root_helper(stack: contextlib.ExitStack, user: pwd.struct_passwd,
                      rootwrap: str, rootwrap_conf: str, scratch: str,
                      pythonpath: str | None = None,
                      sudo_log: str | None = None) -> str:
    """sudoers: the user may run ``rootwrap`` with our config, only.

    Cinder runs the bare name (``sudo cinder-rootwrap CONF``) and sudo
    resets PATH, so secure_path must hold the venv's bin directory.
    sudo logs every command it runs for the user to ``sudo_log``. Root's
    side (rootwrap, the file helper, the privsep daemons) gets
    ``pythonpath``, as the user's side does: PYTHONPATH comes from a
    root-owned env_file in ``scratch``, never from the user's environment.
    The rules are checked with visudo before they go to /etc/sudoers.d;
    ``stack`` removes them again. Returns the path of the rules.
    """
    values = {'user': user.pw_name, 'rootwrap': rootwrap,
              'bin': os.path.dirname(rootwrap), 'path': SYSTEM_PATH,
              'conf': rootwrap_conf}
    rules = 'Defaults:%(user)s secure_path="%(bin)s:%(path)s"\n'
    if sudo_log:
        values['log'] = sudo_log
        rules += 'Defaults:%(user)s logfile="%(log)s", loglinelen=0\n'
    if pythonpath:
        values['env'] = write_new(os.path.join(scratch, 'sudo-env'),
                                  'PYTHONPATH=%s\n' % pythonpath, 0o400)
        rules += 'Defaults:%(user)s env_file="%(env)s"\n'
    rules = (rules + '%(user)s ALL = (root) NOPASSWD: %(rootwrap)s '
             '%(conf)s *\n') % values
    candidate = write_new(os.path.join(scratch, 'sudoers'), rules, 0o440)
    check = subprocess.run(['visudo', '-cf', candidate], capture_output=True,
                           text=True, timeout=30)
    if check.returncode != 0:
        raise SandboxError('bad sudoers rules: %s%s\n%s'
                           % (check.stdout, check.stderr, rules))
    path = write_new(sudoers_path(user), rules, 0o440)
    stack.callback(os.unlink, path)
    return path


class UserPopenArgs(TypedDict, total=False):
    """Keyword arguments of subprocess.Popen/run that as_user() gives.

    Not total: {} runs a process as the caller, unchanged.
    """

    cwd: str
    user: int
    group: int
    extra_groups: list[int]
    env: dict[str, str]


def as_user(user: pwd.struct_passwd, workdir: str,
            pythonpath: str | None = None) -> UserPopenArgs:
    """Popen arguments running a process as ``user``, as a service would.

    No TMPDIR: privsep's sockets go to /tmp, where filters expect them.
    """
    env = {'PATH': SYSTEM_PATH, 'HOME': workdir, 'LANG': 'C.UTF-8',
           'PYTHONDONTWRITEBYTECODE': '1',
           'PYTHONWARNINGS': 'ignore::DeprecationWarning'}
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    return UserPopenArgs(cwd=workdir, user=user.pw_uid, group=user.pw_gid,
                         extra_groups=[], env=env)


def user_cannot_run(user: pwd.struct_passwd, python: str,
                    modules: Sequence[str],
                    pythonpath: str | None = None) -> str | None:
    """Why ``user`` cannot import ``modules`` with ``python``, or None.

    A venv built on an interpreter under /root (pyenv) is root's only.
    """
    probe = [python, '-c', 'import %s' % ', '.join(modules)]
    try:
        res = subprocess.run(probe, capture_output=True, text=True,
                             timeout=60, **as_user(user, '/', pythonpath))
    except OSError as exc:
        return ('an unprivileged user cannot run %s (%s): build the venv '
                'on a Python outside /root'
                % (os.path.realpath(python), exc.strerror))
    if res.returncode != 0:
        return ('an unprivileged user cannot import %s with %s: %s'
                % (', '.join(modules), python, res.stderr.strip()[-300:]))
    return None


def proc_uids(pid: int | str) -> tuple[int, ...] | None:
    """(real, effective) uid of a process, or None once it is gone."""
    try:
        with open('/proc/%s/status' % pid) as f:
            for line in f:
                if line.startswith('Uid:'):
                    return tuple(int(u) for u in line.split()[1:3])
    except OSError:
        pass
    return None
