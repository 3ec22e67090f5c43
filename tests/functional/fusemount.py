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
"""A real FUSE mount for functional tests: bindfs over a local directory.

The backing directory can sit on a small tmpfs so that a test fills the
filesystem for real.
"""

import os
import shutil
import signal
import subprocess
import time


def _is_mounted(path):
    with open('/proc/self/mounts') as f:
        return any(line.split()[1] == path for line in f)


def _wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class BindfsMount:
    """bindfs -o allow_other BACKING MOUNTPOINT, always torn down."""

    def __init__(self, base, tmpfs_size=None):
        self.base = str(base)
        self.backing = os.path.join(self.base, 'backing')
        self.mountpoint = os.path.join(self.base, 'mnt')
        self.tmpfs_size = tmpfs_size
        self.pid = None

    @property
    def volumes_home(self):
        return os.path.join(self.mountpoint, 'volumes')

    def backing_path(self, name):
        return os.path.join(self.backing, 'volumes', name)

    def start(self):
        if shutil.which('bindfs') is None:
            raise RuntimeError('bindfs is not installed (see bindep.txt)')
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        if self.tmpfs_size and not _is_mounted(self.backing):
            subprocess.run(['mount', '-t', 'tmpfs', '-o',
                            'size=%s' % self.tmpfs_size, 'tmpfs',
                            self.backing], check=True)
        os.makedirs(os.path.join(self.backing, 'volumes'), exist_ok=True)
        # -f keeps bindfs in the foreground so we own its pid and can kill
        # it to play a crashed FUSE daemon.
        proc = subprocess.Popen(['bindfs', '-f', '-o', 'allow_other',
                                 self.backing, self.mountpoint])
        self.pid = proc.pid
        self._proc = proc
        if not _wait_for(lambda: _is_mounted(self.mountpoint)):
            self.stop()
            raise RuntimeError('bindfs did not mount %s' % self.mountpoint)
        return self

    def kill(self):
        """Kill the FUSE daemon: the mount stays, answering ENOTCONN."""
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)

    def stop(self):
        if _is_mounted(self.mountpoint):
            subprocess.run(['umount', '-l', self.mountpoint], check=False)
        if self.pid is not None:
            try:
                self._proc.kill()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.tmpfs_size and _is_mounted(self.backing):
            subprocess.run(['umount', '-l', self.backing], check=False)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class OverlayfsMount(BindfsMount):
    """fuse-overlayfs with BACKING as its upper directory.

    It stands for a FUSE filesystem that hides holes (no lseek) but
    reports st_blocks and copies on its server side (copy_file_range on
    its backing files). The lower directory is empty: every file is the
    upper directory's, at backing_path.
    """

    def start(self):
        if shutil.which('fuse-overlayfs') is None:
            raise RuntimeError('fuse-overlayfs is not installed (see '
                               'bindep.txt)')
        lower = os.path.join(self.base, 'lower')
        work = os.path.join(self.base, 'work')
        for path in (self.backing, self.mountpoint, lower, work):
            os.makedirs(path, exist_ok=True)
        os.makedirs(os.path.join(self.backing, 'volumes'), exist_ok=True)
        proc = subprocess.Popen(
            ['fuse-overlayfs', '-f', '-o', 'allow_other,lowerdir=%s,'
             'upperdir=%s,workdir=%s' % (lower, self.backing, work),
             self.mountpoint], stderr=subprocess.DEVNULL)
        self.pid = proc.pid
        self._proc = proc
        if not _wait_for(lambda: _is_mounted(self.mountpoint)):
            self.stop()
            raise RuntimeError('fuse-overlayfs did not mount %s'
                               % self.mountpoint)
        return self
