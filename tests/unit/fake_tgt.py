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
"""An executor that plays tgtd, tgtadm and tgt-admin, for unit tests.

It keeps targets, LUNs, ACLs and accounts in memory, reads the config
files the helper writes the way tgt-admin does (including its quirks:
``ALL`` is added when a config has no initiator-address, a LUN whose file
is missing is skipped with exit code 0, a target with sessions is left
alone without --force) and answers ``--op show`` in tgtadm's format.
Tests check the resulting tgtd state, and the commands where they matter.
"""

import dataclasses

from oslo_concurrency import processutils


@dataclasses.dataclass
class Target:
    tid: int
    iqn: str
    luns: dict = dataclasses.field(default_factory=dict)   # lun -> path
    lun_params: dict = dataclasses.field(default_factory=dict)
    acl: list = dataclasses.field(default_factory=list)
    accounts: list = dataclasses.field(default_factory=list)
    sessions: list = dataclasses.field(default_factory=list)  # initiators


class FakeTgt:
    def __init__(self, control_port=None):
        self.control_port = control_port
        self.targets = {}        # tid -> Target
        self.accounts = {}       # user -> secret
        self.missing = set()     # backing files tgtd cannot open
        self.calls = []          # argv of every command
        self.kwargs = []         # keyword arguments of every command
        self._failures = []      # [match, exit_code, stdout, stderr, times]

    # -- test helpers --------------------------------------------------

    def by_iqn(self, iqn):
        for target in self.targets.values():
            if target.iqn == iqn:
                return target
        return None

    def fail(self, words, exit_code=1, stdout='', stderr='', times=1):
        """Make the next ``times`` commands containing ``words`` fail."""
        self._failures.append([list(words), exit_code, stdout, stderr,
                               times])

    def restart(self):
        """tgtd crashed and came back empty."""
        self.targets.clear()
        self.accounts.clear()

    def count(self, *words):
        return sum(1 for c in self.calls if _contains(c, words))

    # -- the executor --------------------------------------------------

    def __call__(self, *cmd, **kwargs):
        cmd = [str(c) for c in cmd]
        assert kwargs.get('run_as_root') is True, cmd
        self.calls.append(cmd)
        self.kwargs.append(kwargs)
        check = kwargs.get('check_exit_code', True)
        try:
            for failure in self._failures:
                if failure[4] > 0 and _contains(cmd, failure[0]):
                    failure[4] -= 1
                    raise processutils.ProcessExecutionError(
                        exit_code=failure[1], stdout=failure[2],
                        stderr=failure[3], cmd=' '.join(cmd))
            args = cmd[1:]
            if args[:1] == ['-C']:
                assert int(args[1]) == self.control_port, cmd
                args = args[2:]
            else:
                assert not self.control_port, cmd
            if cmd[0] == 'tgt-admin':
                return self._tgt_admin(args), ''
            if cmd[0] == 'tgtadm':
                return self._tgtadm(_options(args)), ''
            raise AssertionError('unexpected command %s' % cmd)
        except processutils.ProcessExecutionError as err:
            if check is False or (isinstance(check, list)
                                  and err.exit_code in check):
                return err.stdout, err.stderr
            raise

    def _err(self, code, text):
        raise processutils.ProcessExecutionError(exit_code=code,
                                                 stderr='tgtadm: ' + text)

    # -- tgt-admin -----------------------------------------------------

    def _tgt_admin(self, args):
        force = '--force' in args
        if '--update' in args:
            conf = args[args.index('--conf') + 1]
            iqn = args[args.index('--update') + 1]
            return self._update(conf, iqn, force)
        if '--delete' in args:
            iqn = args[args.index('--delete') + 1]
            target = self.by_iqn(iqn)
            if target is None:
                return '# Target with name %s does not exist!\n' % iqn
            if target.sessions and not force:
                return '# Target %s is in use\n' % iqn
            del self.targets[target.tid]
            return ''
        raise AssertionError('unexpected tgt-admin %s' % args)

    def _update(self, conf, iqn, force):
        with open(conf) as f:
            blocks = parse_targets(f.read())
        if iqn not in blocks:
            raise processutils.ProcessExecutionError(
                exit_code=1, stdout='Target %s is currently not configured'
                % iqn)
        opts = blocks[iqn]
        old = self.by_iqn(iqn)
        if old is not None and old.sessions and not force:
            return '# Target %s is in use, it won\'t be updated.\n' % iqn
        if old is not None:
            tid = old.tid
            del self.targets[tid]
        else:
            tid = max(self.targets, default=0) + 1
        target = Target(tid=tid, iqn=iqn)
        self.targets[tid] = target
        path = opts.get('backing-store', [None])[0]
        if path and path not in self.missing:
            target.luns[1] = path
            params = {}
            for key in ('scsi_id', 'scsi_sn', 'bsoflags', 'write-cache'):
                if key in opts:
                    params[key] = opts[key][0]
            target.lun_params[1] = params
        for value in opts.get('incominguser', []):
            user, secret = value.split()
            self.accounts.setdefault(user, secret)
            target.accounts.append(user)
        addresses = opts.get('initiator-address', [])
        target.acl = (addresses or ['ALL']) + opts.get('initiator-name', [])
        return ''

    # -- tgtadm --------------------------------------------------------

    def _tgtadm(self, o):
        mode, op = o.get('--mode'), o.get('--op')
        if mode == 'target' and op == 'show':
            return self.render()
        if mode == 'system' and op == 'show':
            return 'System:\n    State: ready\n'
        if mode == 'account' and op == 'delete':
            if self.accounts.pop(o['--user'], None) is None:
                self._err(22, "can't find the account")
            for target in self.targets.values():
                if o['--user'] in target.accounts:
                    target.accounts.remove(o['--user'])
            return ''
        target = self.targets.get(int(o.get('--tid', 0)))
        if target is None:
            self._err(22, "can't find the target")
        if mode == 'target' and op in ('bind', 'unbind'):
            entry = o.get('--initiator-name') or o.get('--initiator-address')
            if op == 'bind':
                if entry in target.acl:
                    self._err(22, 'this access control rule already exists')
                target.acl.append(entry)
            else:
                if entry not in target.acl:
                    self._err(22, 'this access control rule does not exist')
                target.acl.remove(entry)
            return ''
        if mode == 'logicalunit':
            lun = int(o['--lun'])
            if op == 'delete':
                if lun not in target.luns:
                    self._err(22, "can't find the logical unit")
                del target.luns[lun]
                target.lun_params.pop(lun, None)
                return ''
            if op == 'new':
                if lun in target.luns:
                    self._err(22, 'this logical unit number already exists')
                if o['--backing-store'] in self.missing:
                    self._err(22, 'invalid request')
                target.luns[lun] = o['--backing-store']
                target.lun_params[lun] = (
                    {'bsoflags': o['--bsoflags']} if '--bsoflags' in o
                    else {})
                return ''
            if op == 'update':
                if lun not in target.luns:
                    self._err(22, "can't find the logical unit")
                for item in o['--params'].split(','):
                    key, _sep, value = item.partition('=')
                    target.lun_params[lun][key] = value
                return ''
        raise AssertionError('unexpected tgtadm %s' % o)

    def render(self):
        """``tgtadm --mode target --op show`` as tgtd prints it."""
        out = []
        for tid in sorted(self.targets):
            t = self.targets[tid]
            out += ['Target %d: %s' % (tid, t.iqn),
                    '    System information:',
                    '        Driver: iscsi',
                    '        State: ready',
                    '    I_T nexus information:']
            for n, name in enumerate(t.sessions, 1):
                out += ['        I_T nexus: %d' % n,
                        '            Initiator: %s alias: none' % name,
                        '            Connection: 0',
                        '                IP Address: 127.0.0.1']
            out += ['    LUN information:',
                    '        LUN: 0',
                    '            Type: controller',
                    '            SCSI ID: IET     %04x0000' % tid,
                    '            Backing store type: null',
                    '            Backing store path: None',
                    '            Backing store flags: ']
            for lun in sorted(t.luns):
                params = t.lun_params.get(lun, {})
                out += ['        LUN: %d' % lun,
                        '            Type: disk',
                        '            SCSI ID: %s' % params.get('scsi_id', ''),
                        '            SCSI SN: %s' % params.get('scsi_sn', ''),
                        '            Size: 67 MB, Block size: 512',
                        '            Backing store type: rdwr',
                        '            Backing store path: %s' % t.luns[lun],
                        '            Backing store flags: %s'
                        % params.get('bsoflags', '')]
            out.append('    Account information:')
            out += ['        %s' % user for user in t.accounts]
            out.append('    ACL information:')
            out += ['        %s' % entry for entry in t.acl]
        return '\n'.join(out) + ('\n' if out else '')


def parse_targets(text):
    """{iqn: {key: [values]}} of a tgt-admin config (no includes)."""
    blocks, current = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith('#'):
            continue
        if line.startswith('<target '):
            current = blocks.setdefault(line[8:-1].strip(), {})
        elif line == '</target>':
            current = None
        elif current is not None:
            key, _sep, value = line.partition(' ')
            current.setdefault(key, []).append(value.strip())
    return blocks


def _options(args):
    opts, i = {}, 0
    while i < len(args):
        if args[i].startswith('--') and i + 1 < len(args) and \
                not args[i + 1].startswith('--'):
            opts[args[i]] = args[i + 1]
            i += 2
        else:
            opts[args[i]] = True
            i += 1
    return opts


def _contains(cmd, words):
    return all(w in cmd for w in words)
