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

ENOSPC = 'No space left on device'
ENOTCONN = 'Transport endpoint is not connected'


class FakeFS:
    def __init__(self, root, total=100 << 30, avail=80 << 30):
        self.root = root
        self.files = {}          # path -> apparent size
        self.kinds = {root: 'directory'}   # non-regular entries
        self.total = total
        self.avail = avail
        self.calls = []          # commands as run on the mount
        self.raw_calls = []      # the same with their timeout prefix
        self.failures = {}       # program -> (exit_code, stderr)
        self.unkillable = False  # every call stuck beyond SIGKILL

    # -- test helpers --------------------------------------------------
    def add(self, name, size=0, kind=None):
        path = os.path.join(self.root, name)
        if kind:
            self.kinds[path] = kind
        else:
            self.files[path] = size
        return path

    def names(self):
        return sorted(os.path.basename(p) for p in self.files)

    def fail(self, program, stderr, exit_code=1):
        self.failures[program] = (exit_code, stderr)

    def programs(self):
        return [c[0] for c in self.calls]

    # -- the executor --------------------------------------------------
    def __call__(self, *cmd, **kwargs):
        cmd = [str(c) for c in cmd]
        assert kwargs.get('run_as_root') is True, cmd
        assert kwargs.get('timeout', 0) > int(cmd[3]), cmd
        self.raw_calls.append(cmd)
        if self.unkillable:
            raise subprocess.TimeoutExpired(cmd, kwargs['timeout'])
        if cmd[:3] == ['timeout', '-s', 'KILL']:
            cmd = cmd[4:]
        self.calls.append(cmd)
        check = kwargs.get('check_exit_code', True)
        try:
            if cmd[0] in self.failures:
                code, stderr = self.failures[cmd[0]]
                raise processutils.ProcessExecutionError(
                    exit_code=code, stderr=stderr, cmd=' '.join(cmd))
            handler = getattr(self, '_' + cmd[0].replace('-', '_'))
            return handler(cmd[1:]), ''
        except processutils.ProcessExecutionError:
            if check is False:
                return '', ''
            raise

    def _err(self, cmd, text, code=1):
        raise processutils.ProcessExecutionError(exit_code=code, stderr=text,
                                                 cmd=' '.join(cmd))

    def _stat(self, args):
        if args[0] == '-f':
            return '4096 %d %d\n' % (self.total // 4096, self.avail // 4096)
        fmt, path = args[1], args[2]
        if path in self.kinds:
            return {'%F': self.kinds[path] + '\n', '%s': '0\n'}[fmt]
        if path not in self.files:
            self._err(['stat'], "stat: cannot statx '%s': No such file or "
                      "directory" % path)
        size = self.files[path]
        if fmt == '%F':
            return 'regular file\n' if size else 'regular empty file\n'
        return '%d\n' % size

    @staticmethod
    def _parse_size(text):
        units = {'G': 1 << 30, 'M': 1 << 20, 'K': 1 << 10}
        if text[-1] in units:
            return int(text[:-1]) * units[text[-1]]
        return int(text)

    def _truncate(self, args):
        self.files[args[2]] = self._parse_size(args[1])

    def _rm(self, args):
        path = args[-1]
        if path not in self.files and '-f' not in args:
            self._err(['rm'], 'No such file or directory')
        self.files.pop(path, None)

    def _mv(self, args):
        src, dst = args[-2], args[-1]
        if src not in self.files:
            self._err(['mv'], 'No such file or directory')
        self.files[dst] = self.files.pop(src)

    def _fuse_cinder_copy(self, args):
        src, dst = args[-2], args[-1]
        if src not in self.files:
            self._err(['fuse-cinder-copy'], 'No such file or directory')
        if dst in self.files:
            self._err(['fuse-cinder-copy'], 'File exists')
        self.files[dst] = self.files[src]

    def _find(self, args):
        root = args[0]
        return ''.join('%s/%d\n' % (os.path.basename(p), s)
                       for p, s in sorted(self.files.items())
                       if os.path.dirname(p) == root)

    def _fallocate(self, args):
        pass

    def _dd(self, args):
        opts = dict(a.split('=', 1) for a in args)
        if opts.get('if') != '/dev/null':
            return            # writing zeros: sizes do not change
        path = opts['of']
        if 'excl' in opts.get('conv', '').split(',') and path in self.files:
            self._err(['dd'], "dd: failed to open '%s': File exists" % path)
        self.files[path] = int(opts['seek']) * int(opts.get('bs', '512'))
