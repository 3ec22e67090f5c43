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
"""A private tgtd on 127.0.0.1 for functional tests, always stopped.

Usage::

    with tgtd.Tgtd() as daemon:             # or Tgtd(21, 13261)
        ...    # tgtadm -C daemon.control_port, iscsi://daemon.portal

or the ``make_tgtd`` pytest fixture factory. Several test suites run at
once on one machine, so ports are picked among ours (control ports 21-29,
portals 127.0.0.1:13261-13269) unless given, and a daemon that did not get
exactly its own portal is stopped: when its portal is taken, tgtd quietly
listens on 0.0.0.0:3260 instead. The default tgtd is never touched.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from cinder import exception

CONTROL_PORTS = range(21, 30)
PORTAL_PORTS = range(13261, 13270)
BINARIES = ('tgtd', 'tgtadm', 'tgt-admin')


def missing_binaries(*extra):
    """Names of the required programs that are not installed."""
    return [b for b in BINARIES + extra if shutil.which(b) is None]


def requirements(*extra):
    """pytest marks skipping a module that lacks root or programs.

    CI installs every program (bindep.txt), so these only skip on a
    developer machine that has not run tools/run.
    """
    missing = missing_binaries(*extra)
    return [
        pytest.mark.skipif(bool(missing), reason='not installed: %s'
                           % ', '.join(missing)),
        pytest.mark.skipif(os.geteuid() != 0,
                           reason='needs root for FUSE and tgtd'),
    ]


class NoDB:
    """Cinder's db for volumes that are in none: CHAP is on the volume."""

    def volume_get(self, ctxt, volume_id):
        raise exception.VolumeNotFound(volume_id=volume_id)


def _answers(control_port):
    res = subprocess.run(['tgtadm', '-C', str(control_port), '--mode',
                          'system', '--op', 'show'],
                         capture_output=True, timeout=10)
    return res.returncode == 0


def _span(ports):
    return '%d-%d' % (ports[0], ports[-1])


def _portal_free(port):
    with socket.socket() as sock:
        # as tgtd does: connections in TIME_WAIT do not make a port busy
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


class Tgtd:
    """``tgtd -f -C PORT --iscsi portal=127.0.0.1:PORT`` owned by a test.

    A subclass may claim other port ranges (the benchmark does), so that
    it never competes with the test suites for ports.
    """

    control_ports = CONTROL_PORTS
    portal_ports = PORTAL_PORTS

    def __init__(self, control_port=None, portal_port=None, log_path=None):
        if (control_port is not None
                and control_port not in self.control_ports):
            raise ValueError('tgtd control port must be in %s'
                             % _span(self.control_ports))
        if portal_port is not None and portal_port not in self.portal_ports:
            raise ValueError('iSCSI portal port must be in %s'
                             % _span(self.portal_ports))
        self._want = (control_port, portal_port)
        self.control_port = control_port
        self.portal_port = portal_port
        self.log_path = log_path or os.devnull
        self._proc = None
        self._log = None

    @property
    def portal(self):
        return '127.0.0.1:%d' % self.portal_port

    # -- helpers for tests ---------------------------------------------

    def tgtadm(self, *args, check=True):
        """Run tgtadm against this daemon; returns stdout."""
        cmd = ['tgtadm', '-C', str(self.control_port)] + list(args)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise RuntimeError('%s failed (%d): %s'
                               % (' '.join(cmd), res.returncode,
                                  res.stderr.strip()))
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

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    # -- life cycle ----------------------------------------------------

    def _portals(self):
        out = self.tgtadm('--lld', 'iscsi', '--mode', 'portal', '--op',
                          'show', check=False)
        return [line.split()[1].rsplit(',', 1)[0]
                for line in out.splitlines() if line.startswith('Portal:')]

    def _owns_control_port(self):
        """Is the control socket ours? (Another tgtd may have won it.)"""
        if not self.running:
            return False
        lock = '/run/tgtd/socket.%d.lock' % self.control_port
        fd_dir = '/proc/%d/fd' % self._proc.pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            return False
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) in (
                        lock, '/var' + lock):
                    return True
            except OSError:
                pass
        return False

    def _try(self, control_port, portal_port, timeout):
        self.control_port, self.portal_port = control_port, portal_port
        self._log = open(self.log_path, 'ab')
        # -f: stay in the foreground so that we own the pid to kill it.
        self._proc = subprocess.Popen(
            ['tgtd', '-f', '-C', str(control_port),
             '--iscsi', 'portal=%s' % self.portal],
            stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end and self._proc.poll() is None:
            if self._owns_control_port() and _answers(control_port):
                if self._portals() == [self.portal]:
                    return True
                break       # lost the portal to someone else
            time.sleep(0.05)
        self.stop()
        return False

    def start(self, timeout=10.0):
        missing = missing_binaries()
        if missing:
            raise RuntimeError('not installed: %s' % ', '.join(missing))
        want_control, want_portal = self._want
        for control_port in ([want_control] if want_control
                             else self.control_ports):
            if _answers(control_port):
                continue
            for portal_port in ([want_portal] if want_portal
                                else self.portal_ports):
                if _portal_free(portal_port) and self._try(
                        control_port, portal_port, timeout):
                    return self
                if _answers(control_port):
                    break   # someone else took the control port meanwhile
        raise RuntimeError('no tgtd could start on control port %s and '
                           'portal port %s (see %s)'
                           % (want_control or _span(self.control_ports),
                              want_portal or _span(self.portal_ports),
                              self.log_path))

    def kill(self):
        """SIGKILL tgtd: targets and sessions vanish as in a crash."""
        if self.running:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=10)

    def restart(self):
        """Crash tgtd and start an empty one on the same ports."""
        self.kill()
        self._close_log()
        if not self._try(self.control_port, self.portal_port, 10.0):
            raise RuntimeError('tgtd did not come back on control port %d'
                               % self.control_port)
        return self

    def stop(self):
        """Stop tgtd; falls back to SIGKILL, never leaves it running."""
        if self._owns_control_port():
            res = subprocess.run(['tgtadm', '-C', str(self.control_port),
                                  '--op', 'delete', '--mode', 'system'],
                                 capture_output=True, timeout=30)
            try:
                self._proc.wait(timeout=5 if res.returncode == 0 else 0.1)
            except subprocess.TimeoutExpired:
                pass
        self.kill()         # only ever our own pid
        self._close_log()

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture
def make_tgtd(tmp_path):
    """Factory: ``make_tgtd([control_port, portal_port])``, stopped after."""
    started = []

    def make(control_port=None, portal_port=None):
        daemon = Tgtd(control_port, portal_port, log_path=str(
            tmp_path / ('tgtd-%d.log' % len(started))))
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()
