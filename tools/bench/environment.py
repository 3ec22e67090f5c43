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
"""What every section runs on: mounts, tgtd instances, drivers, sizes.

The environment of one run (``Env``) brings its own bindfs, faultfs and
fuse-overlayfs scratch mounts and tgtd instances, and records the peak
memory of each daemon when it stops. ``Commands`` is the drivers'
executor, timing every command per program.
"""

import collections
import itertools
import os
import resource
import shutil
import sys
import tempfile
import time

from oslo_concurrency import processutils
from oslo_config import cfg

from cinder import context
from cinder.tests.unit import fake_snapshot
from cinder.tests.unit import fake_volume
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver

from bench import units
from fuse_cinder.allinone import faultfs
from fuse_cinder.allinone import sandbox
from fuse_cinder import driver
from fuse_cinder import options
from fuse_cinder import privileged

CTX = context.get_admin_context()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# Nova's connector for the export tests; qemu's own initiator name for the
# data path, so that its LUNs are restricted exactly as Nova's would be.
HOST_CONNECTOR = {'initiator': 'iqn.1994-05.com.example:bench-host',
                  'ip': '127.0.0.1', 'host': 'bench-host',
                  'multipath': False}
QEMU_CONNECTOR = {'initiator': 'iqn.2008-11.org.linux-kvm',
                  'ip': '127.0.0.1', 'host': 'bench-qemu',
                  'multipath': False}

# Snapshots and clones of each source per filesystem (medians).
COPY_ROUNDS = 3

# Each run size as (full run, --quick).
_SIZES = {
    'reps': (9, 3), 'export_others': (500, 20), 'stats_volumes': (1000, 100),
    'copy_gb': (10, 1), 'copy_extents': (64, 64), 'copy_extent_mib': (16, 2),
    'empty_copy_gb': (1024, 64), 'lun_mib': (128, 64),
    'seq_write_mib': (64, 32), 'random_writes': (2000, 500),
    'random_reads': (4000, 1000), 'io_rounds': (5, 2), 'restart_reps': (5, 2),
}
SIZES = {mode: {name: sizes[i] for name, sizes in _SIZES.items()}
         for i, mode in enumerate(('full', 'quick'))}


class BenchTgtd(sandbox.Tgtd):
    """A private tgtd on ports that no test suite uses."""

    def __init__(self, log_path=None, tuned=True):
        super().__init__(log_path=log_path, control_ports=range(90, 100),
                         portal_ports=range(13331, 13340), tuned=tuned)


Sample = collections.namedtuple('Sample', 'seconds commands argv programs')


class Commands:
    """The driver's executor: runs each command, timing it per program.

    Knowing how long one program (the bounded file check on the mount)
    took inside an operation separates its cost from the driver's own.
    """

    def __init__(self):
        self.seconds = collections.Counter()
        self.calls = collections.Counter()
        self.history = []

    def __call__(self, *cmd, **kwargs):
        bounded = cmd[0] == 'timeout' and len(cmd) > 4
        program = cmd[4] if bounded else cmd[0]
        self.history.append(cmd[4:] if bounded else cmd)
        start = time.perf_counter()
        try:
            return processutils.execute(*cmd, **kwargs)
        finally:
            self.seconds[program] += time.perf_counter() - start
            self.calls[program] += 1

    def measure(self, func):
        """Run func: its seconds, commands, argvs and seconds per program."""
        seconds = self.seconds.copy()
        calls = sum(self.calls.values())
        first = len(self.history)
        start = time.perf_counter()
        func()
        elapsed = time.perf_counter() - start
        programs = self.seconds.copy()
        programs.subtract(seconds)
        return Sample(elapsed, sum(self.calls.values()) - calls,
                      self.history[first:], programs)


def fadvise_dontneed(paths):
    """Drop these files from the page cache (and only these).

    Reads are measured cold at every layer without touching other users'
    caches, as dropping all caches would on a shared machine.
    """
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def allocated(path):
    return os.stat(path).st_blocks * 512


def vm_hwm(pid):
    """Peak resident set size of a process in bytes (0 if unknown)."""
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * units.KiB
    except (OSError, TypeError, ValueError):
        pass
    return 0


def cpu_seconds(pid):
    """User plus system CPU seconds of a process so far (procfs)."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def thread_cpu_seconds(pid):
    """CPU seconds of a process's main thread (schedstat: nanoseconds).

    /proc/PID/stat counts in clock ticks (10 ms), too coarse for one
    tgtd request.
    """
    with open('/proc/%d/schedstat' % pid) as f:
        return int(f.read().split()[0]) / 1e9


def children_cpu_seconds():
    """CPU seconds of this process's waited-for children (qemu-img)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class FaultfsMount(faultfs.FaultFS):
    """faultfs laid out like BindfsMount: backing/volumes, mnt/volumes.

    It stands for a FUSE client that implements lseek (SEEK_DATA and
    SEEK_HOLE), which bindfs 1.14 does not.
    """

    def __init__(self, base):
        self.backing_dir = os.path.join(base, 'backing')
        os.makedirs(os.path.join(self.backing_dir, 'volumes'))
        super().__init__(self.backing_dir, os.path.join(base, 'mnt'),
                         log_path=os.path.join(base, 'faultfs.log'))

    @property
    def volumes_home(self):
        return os.path.join(self.mountpoint, 'volumes')

    def backing_path(self, name):
        return os.path.join(self.backing_dir, 'volumes', name)


def privsep_root_helper():
    """Start the drivers' privsep daemon as production does, from here.

    The benchmark runs as root, so no sudo or rootwrap: ``env`` runs the
    privsep-helper of this interpreter's virtualenv, with this checkout
    first on PYTHONPATH so that the daemon runs the code measured.
    """
    pythonpath = [ROOT] + [d for d in os.environ.get(
        'PYTHONPATH', '').split(os.pathsep) if d and d != ROOT]
    return ['env', 'PATH=%s' % os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get('PATH', '')]),
        'PYTHONPATH=%s' % os.pathsep.join(pythonpath)]


class Env:
    """Mounts, tgtd instances and drivers of one run; all torn down."""

    def __init__(self, stack, workdir):
        self.stack = stack
        self.base = tempfile.mkdtemp(prefix='fuse-cinder-bench-',
                                     dir=workdir)
        stack.callback(shutil.rmtree, self.base, ignore_errors=True)
        # Not imported at the top among the other libraries: oslo.privsep
        # picks green or plain pipes when first imported, and only the
        # cinder.tests.unit imports (see bench/__init__.py) patch this
        # process with eventlet, as cinder-volume is. With a plain pipe
        # the whole process blocks while the daemon starts.
        from oslo_privsep import priv_context
        # Started by the first tgt call; stopped after every tgtd.
        priv_context.init(root_helper=privsep_root_helper())
        stack.callback(privileged.tgt_pctxt.stop)
        self.commands = Commands()
        self.peak = {}
        self._ids = itertools.count(1)
        self._groups = itertools.count(1)
        self.bindfs = sandbox.ScratchMount(self.path('bindfs'))
        stack.callback(self._stop, 'bindfs', self.bindfs)
        self.bindfs.start()
        os.makedirs(self.bindfs.volumes_home, exist_ok=True)
        self.faultfs = FaultfsMount(self.path('faultfs'))
        stack.callback(self._stop, 'faultfs', self.faultfs)
        self.faultfs.start()
        self.overlayfs = sandbox.ScratchOverlayfs(self.path('overlayfs'))
        stack.callback(self._stop, 'fuse-overlayfs', self.overlayfs)
        self.overlayfs.start()

    def path(self, *parts):
        return os.path.join(self.base, *parts)

    def _note_peak(self, name, pid):
        self.peak[name] = max(self.peak.get(name, 0), vm_hwm(pid))

    def _stop(self, name, thing):
        try:
            self._note_peak(name, thing.pid)
        finally:
            thing.stop()

    def tgtd(self, name, tuned=True):
        """A tgtd as the drop-in runs it; untuned as Debian's unit does."""
        daemon = BenchTgtd(log_path=self.path('tgtd-%s.log' % name),
                           tuned=tuned)
        daemon.name = name
        daemon.start()
        self.stack.callback(self.stop_tgtd, daemon)
        return daemon

    def stop_tgtd(self, daemon):
        try:
            if daemon.running:
                self._note_peak('tgtd', daemon.proc.pid)
        finally:
            daemon.stop()

    def home(self, mount, name):
        """A fresh volumes_home directory on a mount."""
        home = os.path.join(mount.volumes_home, name)
        os.makedirs(home)
        return home

    def driver(self, volumes_home, daemon=None, **opts):
        """A set-up FuseISCSIDriver in a backend section of its own."""
        group = 'bench_%d' % next(self._groups)
        conf = configuration.Configuration(cinder_driver.volume_opts,
                                           config_group=group)
        conf.append_config_values(options.fuse_opts + options.tgt_opts)
        # No background watch: its reconciliation would re-create what a
        # measurement removes from tgtd on purpose (reconcile is timed
        # on its own).
        values = dict(volume_backend_name=group, volumes_home=volumes_home,
                      fuse_watch_interval=0,
                      fuse_fs_call_timeout=120, fuse_copy_timeout=3600,
                      target_ip_address='127.0.0.1',
                      volumes_dir=self.path('targets-%s' % (
                          daemon.name if daemon else 'none')))
        if daemon is not None:
            values.update(fuse_tgt_control_port=daemon.control_port,
                          target_port=daemon.portal_port)
        values.update(opts)
        for name, value in values.items():
            cfg.CONF.set_override(name, value, group=group)
        drv = driver.FuseISCSIDriver(configuration=conf,
                                     execute=self.commands)
        # No database here: CHAP credentials live on the volume objects.
        drv.db = drv.target_driver.db = sandbox.NoDB()
        drv.do_setup(CTX)
        drv.check_for_setup_error()
        return drv

    def volume(self, size_gb, **fields):
        n = next(self._ids)
        fields.setdefault('provider_auth', None)
        fields.setdefault('provider_location', None)
        return fake_volume.fake_volume_obj(
            CTX, id='%08x-0000-4000-8000-%012x' % (n, n), size=size_gb,
            **fields)

    def snapshot(self, vol):
        n = next(self._ids)
        snap = fake_snapshot.fake_snapshot_obj(
            CTX, id='%08x-0000-4000-8000-%012x' % (n, n), volume_id=vol.id,
            volume_size=vol.size)
        snap.volume = vol
        return snap


def filesystems(env):
    return [('bindfs', env.bindfs), ('faultfs', env.faultfs)]


def copy_filesystems(env):
    """The mounts of the copy benchmark.

    bindfs and fuse-overlayfs hide holes (fuse-overlayfs copies on its
    server side), faultfs reports them.
    """
    return [('bindfs', env.bindfs), ('fuse-overlayfs', env.overlayfs),
            ('faultfs', env.faultfs)]


def export(drv, vol, connector):
    """create_export and initialize_connection, as Cinder calls them."""
    data = drv.create_export(CTX, vol, connector)
    vol.provider_location = data['provider_location']
    vol.provider_auth = data['provider_auth']
    return drv.initialize_connection(vol, connector)
