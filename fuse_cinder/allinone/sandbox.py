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

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time

from fuse_cinder import mount_table
from fuse_cinder.targets import tgtd_mgmt

#: Ports a private tgtd picks from unless told otherwise.
CONTROL_PORTS = range(41, 50)
PORTAL_PORTS = range(13281, 13290)
TGT_BINARIES = ('tgtd', 'tgtadm', 'tgt-admin')


class SandboxError(RuntimeError):
    """A piece of the deployment could not be started."""


def wait_for(predicate, timeout, interval=0.1):
    """Poll ``predicate`` until it is true or ``timeout`` s have passed."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)


def missing_programs(*names):
    return [n for n in names if shutil.which(n) is None]


def tcp_port_free(port, host='127.0.0.1'):
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


def free_port(ports, host='127.0.0.1'):
    """The first free port of ``ports``, or None."""
    return next((p for p in ports if tcp_port_free(p, host)), None)


# -- mounts ----------------------------------------------------------------

def mounts():
    """[(mount point, fs type)] from the kernel; never touches a mount."""
    with open('/proc/self/mounts') as f:
        return [(e.mount_point, e.fs_type)
                for e in mount_table.parse_mounts(f.read())]


def is_mounted(path):
    path = os.path.abspath(path)
    return any(point == path for point, _fs in mounts())


def mount_of(path):
    """(mount point, fs type) holding ``path``, by name only.

    No stat or realpath: a hung FUSE daemon would block them.
    """
    entry = mount_table.find_mount(
        os.path.abspath(path),
        [mount_table.MountEntry('', point, fs_type, ())
         for point, fs_type in mounts()])
    return (entry.mount_point, entry.fs_type) if entry else ('/', '')


def is_fuse(path):
    return mount_table.is_fuse_type(mount_of(path)[1])


class BindfsMount(object):
    """``bindfs -f -o allow_other BACKING MOUNTPOINT``, owned by us.

    allow_other lets root (cinder-volume) and tgtd open the files.
    """

    def __init__(self, backing, mountpoint, log_path=None):
        self.backing = os.path.abspath(backing)
        self.mountpoint = os.path.abspath(mountpoint)
        self.log_path = log_path or os.devnull
        self.proc = None

    #: The FUSE daemon and what start() says when it is missing.
    program = 'bindfs'

    @property
    def pid(self):
        """The FUSE daemon's pid while it runs (for its peak memory)."""
        return self.proc.pid if self.proc is not None else None

    def command(self):
        """The daemon's command line; -f keeps it ours (its pid, its end)."""
        return ['bindfs', '-f', '-o', 'allow_other', self.backing,
                self.mountpoint]

    def start(self, timeout=15):
        if missing_programs(self.program):
            raise SandboxError('%s is not installed (see bindep.txt)'
                               % self.program)
        if is_mounted(self.mountpoint):
            raise SandboxError('%s is already a mount point' %
                               self.mountpoint)
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for(lambda: (is_mounted(self.mountpoint) or
                                 self.proc.poll() is not None), timeout) \
                or not is_mounted(self.mountpoint):
            self.stop()
            raise SandboxError('%s did not mount %s (see %s)'
                               % (self.program, self.mountpoint,
                                  self.log_path))
        return self

    def kill(self):
        """SIGKILL the FUSE daemon: the mount stays, answering ENOTCONN."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout=15):
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

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class ScratchMount(BindfsMount):
    """bindfs over ``BASE/backing`` at ``BASE/mnt``; volumes in volumes/.

    The backing directory may be a tmpfs of ``tmpfs_size`` (e.g. '48m'),
    so that a test fills the filesystem for real.
    """

    def __init__(self, base, tmpfs_size=None, log_path=None):
        self.base = os.path.abspath(str(base))
        super().__init__(os.path.join(self.base, 'backing'),
                         os.path.join(self.base, 'mnt'), log_path)
        self.tmpfs_size = tmpfs_size

    @property
    def volumes_home(self):
        return os.path.join(self.mountpoint, 'volumes')

    def backing_path(self, name):
        return os.path.join(self.backing, 'volumes', name)

    def start(self, timeout=15):
        os.makedirs(self.backing, exist_ok=True)
        if self.tmpfs_size and not is_mounted(self.backing):
            subprocess.run(['mount', '-t', 'tmpfs', '-o',
                            'size=%s' % self.tmpfs_size, 'tmpfs',
                            self.backing], check=True)
        os.makedirs(os.path.join(self.backing, 'volumes'), exist_ok=True)
        return super().start(timeout)

    def stop(self, timeout=15):
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

    def command(self):
        lower = os.path.join(self.base, 'lower')
        work = os.path.join(self.base, 'work')
        for path in (lower, work):
            os.makedirs(path, exist_ok=True)
        return ['fuse-overlayfs', '-f', '-o', 'allow_other,lowerdir=%s,'
                'upperdir=%s,workdir=%s' % (lower, self.backing, work),
                self.mountpoint]


# -- tgtd ------------------------------------------------------------------

def tgtadm(control_port, *args, timeout=30):
    """Run tgtadm on one tgtd; returns the CompletedProcess."""
    return subprocess.run(['tgtadm', '-C', str(control_port)] + list(args),
                          capture_output=True, text=True, timeout=timeout)


def tgtd_answers(control_port):
    return tgtadm(control_port, '--mode', 'system', '--op',
                  'show').returncode == 0


def list_targets(control_port):
    """{iqn: tid} of one tgtd."""
    out = tgtadm(control_port, '--lld', 'iscsi', '--mode', 'target',
                 '--op', 'show').stdout
    return {name: target.tid
            for name, target in tgtd_mgmt.parse_targets(out).items()}


def list_accounts(control_port):
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

    def __init__(self, control_port=None, portal_port=None,
                 log_path=None, control_ports=CONTROL_PORTS,
                 portal_ports=PORTAL_PORTS, ip='127.0.0.1'):
        self._want = (control_port, portal_port)
        self._ranges = (control_ports, portal_ports)
        self.ip = ip
        self.control_port = control_port
        self.portal_port = portal_port
        self.log_path = log_path or os.devnull
        self.proc = None

    @property
    def portal(self):
        return '%s:%d' % (self.ip, self.portal_port)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _owns_control_port(self):
        if not self.running:
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

    def _portals(self):
        out = tgtadm(self.control_port, '--lld', 'iscsi', '--mode',
                     'portal', '--op', 'show').stdout
        return [line.split()[1].rsplit(',', 1)[0]
                for line in out.splitlines() if line.startswith('Portal:')]

    def _try(self, control_port, portal_port, timeout):
        self.control_port, self.portal_port = control_port, portal_port
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(
                ['tgtd', '-f', '-C', str(control_port), '--iscsi',
                 'portal=%s' % self.portal],
                stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        ready = wait_for(lambda: (not self.running or (
            self._owns_control_port() and tgtd_answers(control_port))),
            timeout, interval=0.05)
        if ready and self.running and self._portals() == [self.portal]:
            return True
        self._kill()
        return False

    def start(self, timeout=10):
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

    def targets(self):
        return list_targets(self.control_port) if self.running else {}

    def tgtadm(self, *args, check=True):
        """Run tgtadm against this daemon; returns stdout."""
        res = tgtadm(self.control_port, *args)
        if check and res.returncode != 0:
            raise SandboxError('tgtadm -C %d %s failed (%d): %s'
                               % (self.control_port, ' '.join(args),
                                  res.returncode, res.stderr.strip()))
        return res.stdout

    def show(self):
        return self.tgtadm('--lld', 'iscsi', '--mode', 'target',
                           '--op', 'show')

    def url(self, iqn, lun=1, user=None, secret=None):
        """A libiscsi/qemu URL of a LUN on this daemon."""
        auth = ''
        if user:
            auth = '%s%%%s@' % (user, secret) if secret else '%s@' % user
        return 'iscsi://%s%s/%s/%d' % (auth, self.portal, iqn, lun)

    def kill(self):
        """SIGKILL tgtd: targets and sessions vanish as in a crash."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self):
        """Crash tgtd and start an empty one on the same ports."""
        self.kill()
        if not self._try(self.control_port, self.portal_port, 10.0):
            raise SandboxError('tgtd did not come back on control port %d'
                               % self.control_port)
        return self

    def remove_targets(self):
        """Delete every target and CHAP account, sessions or not."""
        if not self._owns_control_port():
            return
        for iqn, tid in sorted(self.targets().items()):
            tgtadm(self.control_port, '--lld', 'iscsi', '--mode', 'target',
                   '--op', 'delete', '--force', '--tid', str(tid))
        for user in list_accounts(self.control_port):
            tgtadm(self.control_port, '--lld', 'iscsi', '--mode',
                   'account', '--op', 'delete', '--user', user)

    def stop(self):
        """Remove the targets, then stop tgtd (SIGKILL as a last resort)."""
        if self._owns_control_port():
            self.remove_targets()
            tgtadm(self.control_port, '--op', 'delete', '--mode', 'system')
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    def _kill(self):
        if self.proc is not None:
            kill_session(self.proc.pid)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class NoDB(object):
    """Cinder's db for volumes that are in none: CHAP is on the volume."""

    def volume_get(self, ctxt, volume_id):
        # Imported here: the all-in-one imports this module before it
        # patches the process with eventlet, which Cinder needs first.
        from cinder import exception
        raise exception.VolumeNotFound(volume_id=volume_id)


# -- processes -------------------------------------------------------------

def proc_stat(pid):
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


def _stat(pid):
    """(ppid, session id) of a process, or None once it is gone."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    return int(fields[1]), int(fields[3])


def session_members(sid):
    """Pids of the live processes of session ``sid``."""
    found = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            stat = _stat(name)
            if stat is not None and stat[1] == sid:
                found.append(int(name))
    return found


def descendants(pid):
    """Pids of every live process below ``pid``."""
    children = {}
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


def kill_session(sid, sig=signal.SIGKILL):
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


def write_new(path, text, mode=0o644):
    """Create ``path`` (never an existing file) with ``text``."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode),
              'w') as f:
        f.write(text)
    return path


def make_user(stack, prefix='fuse-cinder-t'):
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


def user_exists(name):
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def write_rootwrap_conf(path, venv_bin, filters_path=FILTERS_PATH):
    """rootwrap.conf reading only ``filters_path``; returns ``path``."""
    return write_new(
        path, '[DEFAULT]\nfilters_path = %s\nexec_dirs = %s\n'
        'use_syslog = False\n'
        % (filters_path, ','.join([venv_bin] + SYSTEM_PATH.split(':'))))


def sudoers_path(user):
    # No dot in the name: sudo skips files in sudoers.d that have one.
    return '/etc/sudoers.d/%s' % user.pw_name


def allow_root_helper(stack, user, rootwrap, rootwrap_conf, scratch,
                      pythonpath=None, sudo_log=None):
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


def as_user(user, workdir, pythonpath=None):
    """Popen arguments running a process as ``user``, as a service would.

    No TMPDIR: privsep's sockets go to /tmp, where filters expect them.
    """
    env = {'PATH': SYSTEM_PATH, 'HOME': workdir, 'LANG': 'C.UTF-8',
           'PYTHONDONTWRITEBYTECODE': '1',
           'PYTHONWARNINGS': 'ignore::DeprecationWarning'}
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    return dict(cwd=workdir, user=user.pw_uid, group=user.pw_gid,
                extra_groups=[], env=env)


def user_cannot_run(user, python, modules, pythonpath=None):
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


def proc_uids(pid):
    """(real, effective) uid of a process, or None once it is gone."""
    try:
        with open('/proc/%s/status' % pid) as f:
            for line in f:
                if line.startswith('Uid:'):
                    return tuple(int(u) for u in line.split()[1:3])
    except OSError:
        pass
    return None
