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
"""An executor that plays a small filesystem, for unit tests.

It understands the few commands the driver runs on the mount, keeps the
files' apparent sizes in a dict, and can be told to fail a command the way
a full, dead or hung FUSE mount makes it fail. Tests then check what is
left on the "filesystem", not which strings were run.
"""

import os
import subprocess

from oslo_concurrency import processutils

from fuse_cinder import names as file_names

#: Every command line any FakeFS received in this test run, timeout
#: prefix included: test_rootwrap checks that the shipped filters admit
#: each of them.
RECORDED = []

ENOSPC = 'No space left on device'
ENOTCONN = 'Transport endpoint is not connected'
HELPER = 'fuse-cinder-files'


EXDEV = 'Invalid cross-device link'


class FakeFS:
    def __init__(self, root, total=100 << 30, avail=80 << 30):
        self.root = root
        # volumes_home -> filesystem: the helper's directories, and which
        # of them a rename may cross (only within one filesystem).
        self.homes = {root: 'fs0'}
        self.home = root         # the directory of the request running
        self.files = {}          # path -> apparent size
        self.kinds = {root: 'directory'}   # non-regular entries
        self.total = total
        self.avail = avail
        self.calls = []          # commands as run on the mount
        self.raw_calls = []      # the same with their timeout prefix
        self.failures = {}       # operation -> (exit_code, stderr)
        self.unkillable = False  # every call stuck beyond SIGKILL

    # -- test helpers --------------------------------------------------
    def add(self, name, size=0, kind=None, home=None):
        path = os.path.join(home or self.root, name)
        if kind:
            self.kinds[path] = kind
        else:
            self.files[path] = size
        return path

    def add_home(self, home, filesystem='fs0'):
        """Another volumes_home the helper may be given (migrations)."""
        self.homes[home] = filesystem
        self.kinds[home] = 'directory'

    def names(self, home=None):
        home = home or self.root
        return sorted(os.path.basename(p) for p in self.files
                      if os.path.dirname(p) == home)

    def fail(self, op, stderr, exit_code=1):
        """Make every request ``op`` (a helper operation) fail so."""
        self.failures[op] = (exit_code, stderr)

    def programs(self):
        """The operations run: the helper's ``OP`` word, else the program."""
        return [self._key(c) for c in self.calls]

    @staticmethod
    def _key(cmd):
        return cmd[1] if cmd[0] == HELPER else cmd[0]

    # -- the executor --------------------------------------------------
    def __call__(self, *cmd, **kwargs):
        cmd = [str(c) for c in cmd]
        assert kwargs.get('run_as_root') is True, cmd
        assert kwargs.get('timeout', 0) > int(cmd[3]), cmd
        self.raw_calls.append(cmd)
        RECORDED.append(cmd)
        if self.unkillable:
            raise subprocess.TimeoutExpired(cmd, kwargs['timeout'])
        if cmd[:3] == ['timeout', '-s', 'KILL']:
            cmd = cmd[4:]
        self.calls.append(cmd)
        check = kwargs.get('check_exit_code', True)
        try:
            if self._key(cmd) in self.failures:
                code, stderr = self.failures[self._key(cmd)]
                raise processutils.ProcessExecutionError(
                    exit_code=code, stderr=stderr, cmd=' '.join(cmd))
            assert cmd[0] == HELPER and cmd[2] in self.homes, cmd
            self.home = cmd[2]
            handler = getattr(self, '_' + cmd[1])
            return handler(*cmd[3:]) or '', ''
        except processutils.ProcessExecutionError:
            if check is False:
                return '', ''
            raise

    @staticmethod
    def _err(text, code=1):
        raise processutils.ProcessExecutionError(
            exit_code=code, stderr='%s: %s' % (HELPER, text), cmd=HELPER)

    def _path(self, name, check=file_names.is_owned, home=None):
        """The helper's own name rules: a refusal is a driver bug here."""
        assert check(name), 'the root helper would refuse %r' % name
        return os.path.join(home or self.home, name)

    def _other_home(self, dst_home, src, dst, existing='keep'):
        """The two-directory form: the helper's rules, and EXDEV."""
        assert dst_home in self.homes, dst_home
        assert file_names.is_volume(src), src
        assert (dst == src and existing == 'keep') or \
            file_names.is_temp_of(dst, src), (src, dst)
        return dst_home

    def _stat(self, name):
        path = self._path(name, file_names.is_plain)
        if path in self.kinds:
            return '%s 0 0\n' % self.kinds[path]
        if path not in self.files:
            self._err('stat %s: No such file or directory' % name)
        return 'regular %d 0\n' % self.files[path]

    def _statfs(self):
        return '4096 %d %d\n' % (self.total // 4096, self.avail // 4096)

    def _probe(self):
        pass

    def _create(self, name, size, provisioning):
        path = self._path(name)
        if path in self.files:
            self._err('create %s: File exists' % name)
        self.files[path] = int(size)

    def _grow(self, name, size, provisioning):
        path = self._path(name)
        if int(size) < self.files[path]:
            self._err('refused: cannot shrink', code=2)
        self.files[path] = int(size)

    def _delete(self, name):
        size = self.files.pop(self._path(name), None)
        return '' if size is None else '%d\n' % size

    def _rename(self, src, dst, existing, dst_home=None):
        if dst_home:
            self._other_home(dst_home, src, dst, existing)
        src_path = self._path(src, file_names.is_plain)
        dst_path = self._path(dst, file_names.is_rename_target, dst_home)
        if src_path not in self.files:
            self._err('rename %s: No such file or directory' % src)
        if dst_home and self.homes[dst_home] != self.homes[self.home]:
            self._err('rename %s: %s' % (src, EXDEV))
        if existing == 'keep' and dst_path in self.files:
            self._err('rename %s: File exists' % src)
        self.files[dst_path] = self.files.pop(src_path)

    def _copy(self, src, dst, provisioning, dst_home=None):
        if dst_home:
            self._other_home(dst_home, src, dst)
        src_path = self._path(src, file_names.is_object)
        dst_path = self._path(dst, home=dst_home)
        if src_path not in self.files:
            self._err('copy %s: No such file or directory' % src)
        if dst_path in self.files:
            self._err('copy %s: File exists' % src)
        self.files[dst_path] = self.files[src_path]

    def _list(self):
        return ''.join('%s\0%d\0' % (os.path.basename(p), s)
                       for p, s in sorted(self.files.items())
                       if os.path.dirname(p) == self.home)
