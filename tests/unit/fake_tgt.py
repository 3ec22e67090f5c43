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
"""The privileged tgt entry points over an in-memory tgtd, for unit tests.

It implements fuse_cinder.privileged.tgt's six functions with their
contract: the same argument checks (the real validators, except the
mount lookup), the lowest free tid, LUN 1 only on a file tgtd can open
(``missing`` lists those it cannot), the CHAP account bound before the
ACL, a full rollback of a failed export, idempotence for an identical
target, delete with --force semantics, and a LUN left out when its
re-open fails. ``show`` answers in tgtadm's format. Tests check the
resulting tgtd state, and the calls where they matter.
"""

import dataclasses

from fuse_cinder.privileged import tgt as priv_tgt
from fuse_cinder.targets import tgtd_mgmt


@dataclasses.dataclass
class Target:
    tid: int
    iqn: str
    luns: dict = dataclasses.field(default_factory=dict)   # lun -> path
    lun_params: dict = dataclasses.field(default_factory=dict)
    acl: list = dataclasses.field(default_factory=list)
    accounts: list = dataclasses.field(default_factory=list)
    sessions: list = dataclasses.field(default_factory=list)  # initiators
    session_params: dict = dataclasses.field(default_factory=dict)


class FakeTgt:
    def __init__(self, control_port=0):
        self.control_port = control_port
        self.targets = {}        # tid -> Target
        self.accounts = {}       # user -> secret
        self.missing = set()     # backing files tgtd cannot open
        self.calls = []          # (entry point, args without the port)
        self._failures = []      # [entry point, exception, times]

    # -- test helpers --------------------------------------------------

    def by_iqn(self, iqn):
        for target in self.targets.values():
            if target.iqn == iqn:
                return target
        return None

    def fail(self, name, error, times=1):
        """Make the next ``times`` calls of entry point ``name`` raise."""
        self._failures.append([name, error, times])

    def restart(self):
        """tgtd crashed and came back empty."""
        self.targets.clear()
        self.accounts.clear()

    def count(self, name):
        return sum(1 for c in self.calls if c[0] == name)

    def _enter(self, name, port, *args):
        priv_tgt.check_port(port)
        assert port == self.control_port, (name, port)
        self.calls.append((name,) + args)
        for failure in self._failures:
            if failure[0] == name and failure[2] > 0:
                failure[2] -= 1
                raise failure[1]

    def _ours(self, iqn):
        priv_tgt.check_iqn(iqn)
        return self.by_iqn(iqn)

    @staticmethod
    def _check_lun_args(path, bsoflags, write_cache, serial, readonly):
        if not priv_tgt.is_volume_path(path):
            raise priv_tgt._invalid('The backing file', 'is no volume path')
        priv_tgt.check_bsoflags(bsoflags)
        priv_tgt.check_flag(write_cache, 'write_cache')
        priv_tgt.check_serial(serial)
        priv_tgt.check_flag(readonly, 'readonly')

    def _add_lun(self, target, path, bsoflags, write_cache, serial,
                 readonly):
        if path in self.missing:
            raise tgtd_mgmt.TgtdError("can't open %s" % path)
        target.luns[priv_tgt.LUN] = path
        params = {'scsi_id': serial, 'scsi_sn': serial,
                  'bsoflags': bsoflags, 'readonly': readonly}
        if not write_cache:
            params['mode_page'] = priv_tgt.WRITE_CACHE_OFF_MODE_PAGE
        target.lun_params[priv_tgt.LUN] = params

    @staticmethod
    def _acl(initiators):
        if not initiators:
            return [priv_tgt.ALL_ADDRESSES]
        return [priv_tgt.NO_ADDRESS] + list(initiators)

    # -- the entry points ----------------------------------------------

    def show(self, port):
        self._enter('show', port)
        return self.render()

    def export_target(self, port, iqn, path, chap_user, chap_secret,
                      initiators, bsoflags, write_cache, serial,
                      readonly=False, session_params=None):
        self._enter('export_target', port, iqn, path, chap_user,
                    chap_secret, initiators, bsoflags, write_cache, serial,
                    readonly, session_params)
        session_params = priv_tgt.check_session_params(
            {} if session_params is None else session_params)
        existing = self._ours(iqn)
        self._check_lun_args(path, bsoflags, write_cache, serial, readonly)
        priv_tgt.check_chap(chap_user, chap_secret)
        initiators = priv_tgt.check_initiators(initiators)
        if existing is not None:
            params = existing.lun_params.get(priv_tgt.LUN, {})
            if (existing.luns.get(priv_tgt.LUN) != path
                    or existing.accounts != [chap_user]
                    or params.get('scsi_sn') != serial
                    or params.get('readonly') != readonly
                    or set(params.get('bsoflags', '').split(':'))
                    != set(bsoflags.split(':'))):
                raise priv_tgt.TargetConflict(
                    reason='target %s exists with other settings' % iqn)
            existing.acl = self._acl(initiators)
            return existing.tid
        tid = 1
        while tid in self.targets:
            tid += 1
        target = Target(tid=tid, iqn=iqn,
                        session_params=dict(session_params))
        self.targets[tid] = target
        try:
            self._add_lun(target, path, bsoflags, write_cache, serial,
                          readonly)
            if any(chap_user in t.accounts for t in self.targets.values()):
                raise priv_tgt.TargetRefused(
                    reason='CHAP user %s is in use' % chap_user)
            self.accounts[chap_user] = chap_secret
            target.accounts.append(chap_user)
            target.acl = self._acl(initiators)
        except Exception:
            del self.targets[tid]
            if target.accounts:
                del self.accounts[chap_user]
            raise
        return tid

    def describe(self, port, iqn):
        self._enter('describe', port, iqn)
        target = self._ours(iqn)
        if target is None:
            return None
        params = target.lun_params.get(priv_tgt.LUN, {})
        return {'tid': target.tid, 'iqn': iqn,
                'path': target.luns.get(priv_tgt.LUN),
                'serial': params.get('scsi_sn', ''),
                'bsoflags': params.get('bsoflags', ''),
                'readonly': params.get('readonly', False),
                'accounts': list(target.accounts), 'acl': list(target.acl)}

    def delete_target(self, port, iqn, chap_user=None):
        self._enter('delete_target', port, iqn, chap_user)
        target = self._ours(iqn)
        users = {chap_user} - {None}
        if target is not None:
            del self.targets[target.tid]
            users |= set(target.accounts)
        for user in users:
            if not any(user in t.accounts for t in self.targets.values()):
                self.accounts.pop(user, None)

    def set_acl(self, port, iqn, initiators):
        self._enter('set_acl', port, iqn, initiators)
        target = self._ours(iqn)
        initiators = priv_tgt.check_initiators(initiators)
        if target is None:
            raise priv_tgt.TargetMissing(reason='target %s does not exist'
                                         % iqn)
        if not target.accounts:
            raise priv_tgt.TargetRefused(reason='target %s has no CHAP '
                                         'account' % iqn)
        target.acl = self._acl(initiators)

    def reopen_lun(self, port, iqn, path, bsoflags, write_cache, serial,
                   readonly=False):
        self._enter('reopen_lun', port, iqn, path, bsoflags, write_cache,
                    serial, readonly)
        target = self._ours(iqn)
        self._check_lun_args(path, bsoflags, write_cache, serial, readonly)
        if target is None:
            raise priv_tgt.TargetMissing(reason='target %s does not exist'
                                         % iqn)
        target.luns.pop(priv_tgt.LUN, None)
        target.lun_params.pop(priv_tgt.LUN, None)
        self._add_lun(target, path, bsoflags, write_cache, serial, readonly)

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
                        '            Readonly: %s'
                        % ('Yes' if params.get('readonly') else 'No'),
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
    """{iqn: {key: [values]}} of a tgt-admin config (no includes).

    How tgt-admin reads the boot include of the driver's config files.
    """
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
