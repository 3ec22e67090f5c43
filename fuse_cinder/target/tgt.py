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
"""Linux tgt target helper for volumes kept as files on a FUSE mount.

Every exported volume gets one target with LUN 1 and its own small
config file in ``volumes_dir``. The file is what ``tgt-admin --update``
applies, and it is also what tgtd's own service reloads after a host
reboot (see ``etc/tgt/fuse_cinder.conf``).

tgt-admin reports success in several cases where nothing was exported (a
missing backing file, a busy target), so every change is checked against
``tgtadm --op show`` before it is reported as done.

Initiator restriction: tgtd lets an initiator in when *either* its
address or its name is on the target's ACL, and tgt-admin adds the address
``ALL`` to every target whose config has no ``initiator-address``. A
restricted target therefore also carries the address ``0.0.0.0/32``, which
no initiator can come from, so that its ``initiator-name`` lines are what
decides - in tgtd now and whenever tgtd re-reads the file. CHAP is
required in every case.
"""

import contextlib
import dataclasses
import json
import os
import re
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Optional

from oslo_concurrency import lockutils
from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import fileutils

from cinder.common import constants
from cinder import exception
from cinder.i18n import _
from cinder import utils
from cinder.volume.targets import iscsi
from cinder.volume import volume_utils

from fuse_cinder import options
from fuse_cinder import processes

LOG = logging.getLogger(__name__)

#: Every target exports exactly one LUN; LUN 0 is tgtd's controller.
LUN = 1
#: The ACL address entry that lets every initiator address in.
ALL_ADDRESSES = 'ALL'
#: An ACL address no initiator connects from; see the module docstring.
NO_ADDRESS = '0.0.0.0/32'
#: Suffix of the per-volume config files; the include glob relies on it.
CONF_SUFFIX = '.conf'

#: Seconds a ``tgtadm --op show`` result may be reused by ensure_export.
#: cinder-volume calls ensure_export for every in-use volume right after
#: start-up; one listing serves that whole burst.
SHOW_CACHE_TTL = 10.0

#: Timeouts (s) of the helper commands. tgtd is single threaded and
#: blocks when the FUSE daemon hangs; the driver must not hang with it.
TGTADM_TIMEOUT = 30
TGT_ADMIN_TIMEOUT = 120

#: tgt-admin may lose a race for a free tid against another tgt-admin
#: (e.g. another backend of the same host), so an update is retried.
UPDATE_ATTEMPTS = 3

#: Mode page 8 (caching) with WCE cleared; what tgt-admin sends for
#: ``write-cache off``.
WRITE_CACHE_OFF_MODE_PAGE = ('8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:'
                             '0xff:0x80:0x14:0:0:0:0:0:0')

# tgt-admin hands config values to a shell and to Config::General, so
# everything written into the config file is held to these characters.
_SAFE_VALUE_RE = re.compile(r'^[A-Za-z0-9._:/+-]+$')
_CHAP_RE = re.compile(r'^[A-Za-z0-9._-]{1,255}$')
# RFC 3720 names, limited to the characters real initiators use.
_INITIATOR_RE = re.compile(
    r'^(iqn\.\d{4}-\d{2}\.[A-Za-z0-9.-]+(:[A-Za-z0-9.:_-]+)?'
    r'|eui\.[0-9A-Fa-f]{16}'
    r'|naa\.[0-9A-Fa-f]{16}([0-9A-Fa-f]{16})?)$')
_MAX_INITIATOR_LEN = 223

_IQN_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9.:_-]*$')

_TARGET_LINE_RE = re.compile(r'^Target (\d+): (\S+)\s*$')
_HEADER_RE = re.compile(r'^# fuse_cinder target of volume (\S+);')

# One lock for every instance in the process: all of them drive the same
# tgtd and tgt-admin picks tids by reading the current maximum. Processes
# (one cinder-volume per backend) also share a file lock, see _locked().
_TGT_LOCK = threading.Lock()


@dataclasses.dataclass
class TargetState:
    """What tgtd reports about one target."""

    tid: int
    iqn: str
    luns: dict = dataclasses.field(default_factory=dict)
    acl: list = dataclasses.field(default_factory=list)
    accounts: list = dataclasses.field(default_factory=list)
    connected: bool = False

    @property
    def acl_names(self) -> set:
        return {e for e in self.acl if is_initiator_name(e)}

    @property
    def acl_addresses(self) -> set:
        return {e for e in self.acl if not is_initiator_name(e)}


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """Everything a target config file describes."""

    iqn: str
    volume_id: str
    path: str
    chap_user: str
    chap_secret: str
    initiators: frozenset = frozenset()


def is_initiator_name(value: str) -> bool:
    return bool(value) and value.split('.', 1)[0] in ('iqn', 'eui', 'naa')


def parse_show_target(output: str) -> dict:
    """Parse ``tgtadm --mode target --op show`` into {iqn: TargetState}."""
    targets: dict = {}
    current: Optional[TargetState] = None
    section = None
    lun = None
    for raw in output.splitlines():
        match = _TARGET_LINE_RE.match(raw)
        if match:
            current = TargetState(tid=int(match.group(1)),
                                  iqn=match.group(2))
            targets[current.iqn] = current
            section = lun = None
            continue
        if current is None or not raw.strip():
            continue
        line = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if indent <= 4 and line.endswith(':'):
            section = line[:-1]
            lun = None
            continue
        if section == 'I_T nexus information':
            current.connected = True
        elif section == 'LUN information':
            if line.startswith('LUN:'):
                lun = int(line.split(':', 1)[1])
                current.luns[lun] = None
            elif line.startswith('Backing store path:') and lun is not None:
                path = line.split(':', 1)[1].strip()
                current.luns[lun] = None if path == 'None' else path
        elif section == 'ACL information':
            current.acl.append(line)
        elif section == 'Account information':
            current.accounts.append(line.split()[0])
    return targets


def render_config(spec: ExportSpec, write_cache: bool,
                  bsoflags: str) -> str:
    """The tgt-admin config of one exported volume."""
    serial = spec.volume_id.replace('-', '')
    lines = [
        '# fuse_cinder target of volume %s; cinder-volume rewrites this '
        'file.' % spec.volume_id,
        '# It holds the CHAP secret: keep it mode 0600. Do not edit.',
        '<target %s>' % spec.iqn,
        '    driver iscsi',
        '    backing-store %s' % spec.path,
        # The file is exported by this one target only; this also keeps
        # tgt-admin from running lsof across a possibly hung FUSE mount.
        '    allow-in-use yes',
        '    incominguser %s %s' % (spec.chap_user, spec.chap_secret),
        '    write-cache %s' % ('on' if write_cache else 'off'),
    ]
    if bsoflags:
        # tgtd separates open flags with ':'; with ',' it keeps only one.
        lines.append('    bsoflags %s' % bsoflags.replace(',', ':'))
    # Stable identity for udev/multipath across tgtd restarts (tids vary).
    lines.append('    scsi_id %s' % serial)
    lines.append('    scsi_sn %s' % serial)
    if spec.initiators:
        # Matches no initiator; stops tgt-admin from adding ALL, which
        # would let any initiator name in.
        lines.append('    initiator-address %s' % NO_ADDRESS)
    for name in sorted(spec.initiators):
        lines.append('    initiator-name %s' % name)
    lines.append('</target>')
    return '\n'.join(lines) + '\n'


def parse_config(text: str) -> Optional[ExportSpec]:
    """Read back a file written by render_config (None if unusable)."""
    iqn = path = user = secret = volume_id = None
    initiators = set()
    for raw in text.splitlines():
        line = raw.strip()
        header = _HEADER_RE.match(line)
        if header:
            volume_id = header.group(1)
        elif line.startswith('<target ') and line.endswith('>'):
            iqn = line[len('<target '):-1].strip()
        else:
            key, _sep, value = line.partition(' ')
            value = value.strip()
            if key == 'backing-store':
                path = value
            elif key == 'incominguser' and len(value.split()) == 2:
                user, secret = value.split()
            elif key == 'initiator-name':
                initiators.add(value)
    if not (iqn and path and user and secret and volume_id):
        return None
    return ExportSpec(iqn=iqn, volume_id=volume_id, path=path,
                      chap_user=user, chap_secret=secret,
                      initiators=frozenset(initiators))


def write_file_atomic(path: str, content: str, mode: int = 0o600) -> None:
    """Replace ``path`` so readers see the old or the new file, never half.

    The temporary file is a dot file in the same directory, so tgt's
    ``include dir/*.conf`` never picks it up.
    """
    dirname, basename = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % basename, suffix='.tmp',
                               dir=dirname)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, 'w') as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(dirname, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class TgtFileTarget(iscsi.ISCSITarget):
    """tgt target helper for file-backed volumes, one target per volume.

    Constructed like Cinder's own helpers::

        TgtFileTarget(configuration=conf, db=db, executor=self._execute)

    All commands run through ``executor`` with ``run_as_root=True``.
    """

    # One target per volume: the ACL and CHAP account are per volume.
    SHARED_TARGET_SUPPORT = False

    def __init__(self, *args, **kwargs):
        conf = kwargs.get('configuration')
        if conf is not None and hasattr(conf, 'append_config_values'):
            conf.append_config_values(options.tgt_opts)
        super().__init__(*args, **kwargs)
        if kwargs.get('db') is not None:
            self.db = kwargs['db']
        self._execute: Callable = kwargs.get('executor') or utils.execute
        self.protocol = constants.ISCSI
        if self.iscsi_protocol not in (None, 'iscsi'):
            raise exception.InvalidConfigurationValue(
                option='target_protocol', value=self.iscsi_protocol)
        self.control_port = int(
            self.configuration.safe_get('fuse_tgt_control_port') or 0)
        self._show_cache: Optional[tuple] = None

    @contextlib.contextmanager
    def _locked(self):
        """Serialise changes to this tgtd across threads and processes.

        tgt-admin gives a new target the highest tid in use plus one, so two
        cinder-volume processes (one per backend) driving the same tgtd
        would otherwise create two targets with one tid. The file lock is
        named after the control port: one per tgtd on the host.
        """
        lock_path = (cfg.CONF.oslo_concurrency.lock_path or
                     tempfile.gettempdir())
        with _TGT_LOCK, lockutils.lock('tgt-%d' % self.control_port,
                                       lock_file_prefix='fuse-cinder-',
                                       external=True, lock_path=lock_path):
            yield

    # ------------------------------------------------------------------
    # command plumbing

    def _tgtadm(self, *args: str) -> list:
        cmd = ['tgtadm']
        if self.control_port:
            cmd += ['-C', str(self.control_port)]
        return cmd + ['--lld', 'iscsi'] + list(args)

    def _tgt_admin(self, *args: str) -> list:
        cmd = ['tgt-admin']
        if self.control_port:
            cmd += ['-C', str(self.control_port)]
        return cmd + list(args)

    def _run(self, cmd: list, timeout: int = TGTADM_TIMEOUT,
             check_exit_code: Any = True,
             secrets: Iterable[str] = ()) -> tuple:
        """Run a helper command as root; failures carry no secret."""
        try:
            return self._execute(*cmd, run_as_root=True,
                                 root_helper=self._root_helper,
                                 check_exit_code=check_exit_code,
                                 timeout=timeout)
        except processutils.ProcessExecutionError as err:
            detail = _redact('%s %s' % (err.stderr or '', err.stdout or ''),
                             secrets)
            msg = (_('%(cmd)s failed with exit code %(code)s: %(detail)s')
                   % {'cmd': ' '.join(cmd[:1] + _op_words(cmd)),
                      'code': err.exit_code, 'detail': detail.strip()})
        except OSError as err:
            msg = (_('Could not run %(cmd)s: %(err)s')
                   % {'cmd': cmd[0], 'err': err.strerror})
        except Exception as err:
            if not processes.is_timeout_expired(err):
                raise
            msg = (_('%(cmd)s did not finish within %(timeout)s s; is tgtd '
                     'or the FUSE mount hung?')
                   % {'cmd': ' '.join(cmd[:1] + _op_words(cmd)),
                      'timeout': timeout})
        raise exception.ISCSITargetHelperCommandFailed(error_message=msg)

    def _show(self) -> dict:
        out, _err = self._run(self._tgtadm('--mode', 'target',
                                           '--op', 'show'))
        return parse_show_target(out)

    def _targets_for_ensure(self) -> dict:
        """tgtd's targets, from one listing shared by an ensure burst."""
        now = time.monotonic()
        if (self._show_cache is not None
                and now - self._show_cache[0] <= SHOW_CACHE_TTL):
            return self._show_cache[1]
        targets = self._show()
        self._show_cache = (now, targets)
        return targets

    def _remember(self, iqn: str, state: Optional[TargetState]) -> None:
        """Keep the ensure cache true after this helper changed a target."""
        if self._show_cache is None:
            return
        if state is None:
            self._show_cache[1].pop(iqn, None)
        else:
            self._show_cache[1][iqn] = state

    # ------------------------------------------------------------------
    # naming, credentials, config files

    def _iqn(self, volume) -> str:
        """The volume's target name: as exported, else as it would be."""
        location = volume.get('provider_location')
        if location and len(location.split(' ')) > 1:
            iqn = location.split(' ')[1]
        else:
            iqn = '%s%s' % (self.configuration.target_prefix, volume['name'])
        _check_iqn(iqn)
        return iqn

    def _conf_path(self, iqn: str) -> str:
        name = iqn.rsplit(':', 1)[-1]
        return os.path.join(self.volumes_dir, name + CONF_SUFFIX)

    def _chap_for(self, context, volume) -> Optional[tuple]:
        """The volume's CHAP pair, kept across exports (volume, then DB)."""
        auth = volume.get('provider_auth')
        if auth:
            parts = auth.split()
            if len(parts) == 3 and parts[0] == 'CHAP':
                return parts[1], parts[2]
        return self._get_target_chap_auth(context, volume)

    def _read_spec(self, iqn: str) -> Optional[ExportSpec]:
        try:
            with open(self._conf_path(iqn)) as f:
                return parse_config(f.read())
        except FileNotFoundError:
            return None

    def _write_spec(self, spec: ExportSpec) -> bool:
        """Write the config file if it changed; True if it was written."""
        _check_spec(spec)
        content = render_config(
            spec,
            write_cache=bool(self.configuration.safe_get(
                'fuse_tgt_write_cache')),
            bsoflags=self.configuration.safe_get('fuse_tgt_bsoflags') or '')
        path = self._conf_path(spec.iqn)
        try:
            with open(path) as f:
                if f.read() == content:
                    return False
        except FileNotFoundError:
            fileutils.ensure_tree(self.volumes_dir, mode=0o750)
        write_file_atomic(path, content)
        LOG.debug('Wrote tgt config %s for target %s.', path, spec.iqn)
        return True

    def _remove_conf(self, iqn: str) -> None:
        try:
            os.unlink(self._conf_path(iqn))
        except FileNotFoundError:
            pass

    @staticmethod
    def _attached_initiators(volume) -> set:
        names = set()
        for attachment in _attachments(volume):
            if attachment.get('attach_status') in ('attached', 'attaching'):
                name = _connector_initiator(attachment)
                if name:
                    names.add(name)
        return names

    # ------------------------------------------------------------------
    # tgtd state changes (callers hold self._locked())

    def _apply(self, spec: ExportSpec) -> TargetState:
        """Make tgtd export ``spec`` and prove that it does."""
        path = self._conf_path(spec.iqn)
        new_file = not os.path.exists(path)
        self._write_spec(spec)
        update = self._tgt_admin('--conf', path, '--update', spec.iqn)
        for attempt in range(1, UPDATE_ATTEMPTS + 1):
            try:
                self._run(update, timeout=TGT_ADMIN_TIMEOUT,
                          secrets=(spec.chap_secret,))
                break
            except exception.ISCSITargetHelperCommandFailed as err:
                if attempt < UPDATE_ATTEMPTS:
                    LOG.warning('tgt-admin update of %(iqn)s failed, '
                                'retrying: %(err)s',
                                {'iqn': spec.iqn, 'err': err})
                    time.sleep(0.2 * attempt)
                    continue
                if new_file:
                    self._remove_conf(spec.iqn)
                raise exception.ISCSITargetCreateFailed(
                    volume_id=spec.volume_id, message=err.msg)

        state = self._show().get(spec.iqn)
        if (state is not None and state.connected
                and state.luns.get(LUN) != spec.path):
            # tgt-admin leaves a target with sessions alone, e.g. one that
            # tgtd re-created at boot before the FUSE mount was back.
            try:
                state = self._reopen(state, spec.path, spec.volume_id)
            except exception.CinderException as err:
                raise exception.ISCSITargetCreateFailed(
                    volume_id=spec.volume_id, message=err.msg)
        if state is None or state.luns.get(LUN) != spec.path:
            raise self._creation_failed(spec, state, new_file)
        self._sync_acl(state, spec.initiators)
        return state

    def _creation_failed(self, spec: ExportSpec,
                         state: Optional[TargetState],
                         new_file: bool) -> Exception:
        """Clean up after tgt-admin claimed success without exporting."""
        if state is None:
            problem = _('tgt-admin reported success but tgtd has no target '
                        '%s') % spec.iqn
        else:
            problem = (_('tgtd did not attach %(path)s as LUN %(lun)d of '
                         'target %(iqn)s (it has %(has)s); is the backing '
                         'file missing or unreadable for root?')
                       % {'path': spec.path, 'lun': LUN, 'iqn': spec.iqn,
                          'has': state.luns.get(LUN) or _('no such LUN')})
            # Leave no half-made target (it has no session, see above).
            self._run(self._tgt_admin('--delete', spec.iqn),
                      timeout=TGT_ADMIN_TIMEOUT, check_exit_code=False)
        LOG.error(problem)
        if new_file:
            self._remove_conf(spec.iqn)
        return exception.ISCSITargetCreateFailed(
            volume_id=spec.volume_id, message=problem)

    def _sync_acl(self, state: TargetState, initiators: Iterable[str]) -> None:
        """Bind and unbind so that the live ACL matches the config file.

        With initiators: their names plus NO_ADDRESS. Without: ``ALL``
        (CHAP only). New entries go in before old ones go out so that an
        initiator that stays allowed is never locked out meanwhile.
        """
        want_names = set(initiators)
        want_addrs = {NO_ADDRESS} if want_names else {ALL_ADDRESSES}
        have_names, have_addrs = state.acl_names, state.acl_addresses
        tid = str(state.tid)
        steps = ([('bind', '--initiator-name', n)
                  for n in sorted(want_names - have_names)]
                 + [('bind', '--initiator-address', a)
                    for a in sorted(want_addrs - have_addrs)]
                 + [('unbind', '--initiator-address', a)
                    for a in sorted(have_addrs - want_addrs)]
                 + [('unbind', '--initiator-name', n)
                    for n in sorted(have_names - want_names)])
        for op, kind, value in steps:
            self._run(self._tgtadm('--mode', 'target', '--op', op,
                                   '--tid', tid, kind, value))
        if steps:
            state.acl = sorted(want_addrs) + sorted(want_names)
            LOG.debug('ACL of target %(iqn)s is now %(acl)s.',
                      {'iqn': state.iqn, 'acl': state.acl})

    def _delete_target(self, iqn: str, volume_id: str) -> None:
        targets = self._show()
        state = targets.get(iqn)
        spec = self._read_spec(iqn)
        users = set(state.accounts) if state is not None else set()
        if spec is not None:
            users.add(spec.chap_user)
        if state is not None:
            self._run(self._tgt_admin('--force', '--delete', iqn),
                      timeout=TGT_ADMIN_TIMEOUT)
            if iqn in self._show():
                msg = (_('tgt-admin reported success but target %s still '
                         'exists') % iqn)
                LOG.error(msg)
                raise exception.ISCSITargetRemoveFailed(
                    volume_id=volume_id, message=msg)
            LOG.info('Removed target %(iqn)s (tid %(tid)d).',
                     {'iqn': iqn, 'tid': state.tid})
        in_use = {user for t in targets.values() if t.iqn != iqn
                  for user in t.accounts}
        for user in sorted(users - in_use):
            # Accounts are global in tgtd and tgt-admin never removes
            # them; drop ours so the secret does not outlive the export.
            # Exit code 22: the account is already gone.
            self._run(self._tgtadm('--mode', 'account', '--op', 'delete',
                                   '--user', user),
                      check_exit_code=[0, 22])
        self._remove_conf(iqn)

    def _reopen(self, state: TargetState, path: str,
                volume_id: str) -> TargetState:
        """Replace LUN 1 by a fresh one on ``path``; sessions stay up."""
        tid = str(state.tid)
        lun = str(LUN)
        if LUN in state.luns:
            # tgtd refuses while commands are in flight; they drain fast.
            for attempt in range(1, 6):
                try:
                    self._run(self._tgtadm('--mode', 'logicalunit',
                                           '--op', 'delete', '--tid', tid,
                                           '--lun', lun))
                    break
                except exception.ISCSITargetHelperCommandFailed:
                    if attempt == 5:
                        raise
                    time.sleep(0.2 * attempt)
        new = ['--mode', 'logicalunit', '--op', 'new', '--tid', tid,
               '--lun', lun, '--backing-store', path]
        bsoflags = self.configuration.safe_get('fuse_tgt_bsoflags')
        if bsoflags:
            new += ['--bsoflags', bsoflags.replace(',', ':')]
        self._run(self._tgtadm(*new))
        serial = volume_id.replace('-', '')
        params = 'scsi_id=%s,scsi_sn=%s' % (serial, serial)
        if not self.configuration.safe_get('fuse_tgt_write_cache'):
            params += ',mode_page=' + WRITE_CACHE_OFF_MODE_PAGE
        self._run(self._tgtadm('--mode', 'logicalunit', '--op', 'update',
                               '--tid', tid, '--lun', lun,
                               '--params', params))
        fresh = self._show().get(state.iqn)
        if fresh is None or fresh.luns.get(LUN) != path:
            msg = (_('LUN %(lun)d of target %(iqn)s is missing after it was '
                     're-added from %(path)s')
                   % {'lun': LUN, 'iqn': state.iqn, 'path': path})
            LOG.error(msg)
            raise exception.TargetUpdateFailed(volume_id=volume_id,
                                               message=msg)
        LOG.info('Re-opened LUN %(lun)d of target %(iqn)s on %(path)s.',
                 {'lun': LUN, 'iqn': state.iqn, 'path': path})
        return fresh

    # ------------------------------------------------------------------
    # Target API used by the driver

    def create_export(self, context, volume, volume_path, connector=None):
        """Export the volume file; returns location and CHAP like LVM.

        ``connector`` is optional: with it the target is restricted to
        that initiator from the start instead of at initialize_connection.
        Initiators of other live attachments (multi-attach) are kept.
        """
        iqn = '%s%s' % (self.configuration.target_prefix, volume['name'])
        _check_iqn(iqn)
        chap = self._chap_for(context, volume) or (
            volume_utils.generate_username(),
            volume_utils.generate_password())
        with self._locked():
            self._show_cache = None
            old = self._read_spec(iqn)
            initiators = set(old.initiators) if old else set()
            initiator = _connector_initiator(connector)
            if initiator:
                initiators.add(initiator)
            spec = ExportSpec(iqn=iqn, volume_id=volume['id'],
                              path=volume_path, chap_user=chap[0],
                              chap_secret=chap[1],
                              initiators=frozenset(initiators))
            state = self._apply(spec)
        location = self._iscsi_location(
            self.configuration.target_ip_address, state.tid, iqn, LUN,
            self.configuration.target_secondary_ip_addresses)
        LOG.debug('Exported volume %(vol)s as %(loc)s.',
                  {'vol': volume['id'], 'loc': location})
        return {'location': location,
                'auth': self._iscsi_authentication('CHAP', *chap)}

    def ensure_export(self, context, volume, volume_path):
        """Re-create the export if tgtd lost it (tgtd or host restart).

        Cheap when the target is there: one shared tgtd listing per
        start-up burst and a comparison of the config file.
        """
        iqn = self._iqn(volume)
        with self._locked():
            spec = self._read_spec(iqn)
            chap = self._chap_for(context, volume)
            if chap is None and spec is not None:
                chap = (spec.chap_user, spec.chap_secret)
            new_auth = None
            if chap is None:
                LOG.warning('Volume %s has no CHAP credentials; exporting '
                            'it with new ones, its host must re-attach.',
                            volume['id'])
                chap = (volume_utils.generate_username(),
                        volume_utils.generate_password())
                new_auth = self._iscsi_authentication('CHAP', *chap)
            initiators = (spec.initiators if spec is not None
                          else frozenset(self._attached_initiators(volume)))
            want = ExportSpec(iqn=iqn, volume_id=volume['id'],
                              path=volume_path, chap_user=chap[0],
                              chap_secret=chap[1], initiators=initiators)
            state = self._targets_for_ensure().get(iqn)
            if state is not None and state.luns.get(LUN) == volume_path:
                self._write_spec(want)
                self._sync_acl(state, want.initiators)
                LOG.debug('Target %s is present in tgtd.', iqn)
            else:
                LOG.info('Target %(iqn)s of volume %(vol)s is missing in '
                         'tgtd; re-creating it.',
                         {'iqn': iqn, 'vol': volume['id']})
                state = self._apply(want)
                self._remember(iqn, state)
        if new_auth:
            return {'provider_auth': new_auth}
        return None

    def remove_export(self, context, volume):
        """Delete the target, its CHAP account and its config file.

        Idempotent: a target or file that is already gone is fine.
        """
        iqn = self._iqn(volume)
        with self._locked():
            self._show_cache = None
            self._delete_target(iqn, volume['id'])

    def initialize_connection(self, volume, connector):
        """Restrict the target to this initiator, then return the info."""
        initiator = _connector_initiator(connector)
        if initiator:
            _check_initiator(initiator)
            iqn = self._iqn(volume)
            with self._locked():
                self._show_cache = None
                spec = self._read_spec(iqn)
                if spec is None:
                    msg = _('Volume %s is not exported; cannot allow an '
                            'initiator on it') % volume['id']
                    raise exception.VolumeBackendAPIException(data=msg)
                spec = dataclasses.replace(
                    spec, initiators=spec.initiators | {initiator})
                self._write_spec(spec)
                state = self._show().get(iqn)
                if state is None:
                    msg = _('Target %s is not in tgtd') % iqn
                    raise exception.VolumeBackendAPIException(data=msg)
                self._sync_acl(state, spec.initiators)
        return super().initialize_connection(volume, connector)

    def terminate_connection(self, volume, connector, **kwargs):
        """Take the initiator off the ACL unless it still has attachments.

        Several attachments may come from one host (multi-attach); the
        host's initiator stays allowed until its last one goes. Without a
        connector (forced detach) nothing changes: remove_export follows.
        """
        initiator = _connector_initiator(connector)
        if not initiator:
            return
        same = [a for a in _attachments(volume)
                if a.get('attach_status') not in ('detached',)
                and _connector_initiator(a) == initiator]
        if len(same) > 1:
            LOG.debug('Initiator %(ini)s still has %(n)d attachments of '
                      'volume %(vol)s; keeping it on the ACL.',
                      {'ini': initiator, 'n': len(same) - 1,
                       'vol': volume['id']})
            return
        iqn = self._iqn(volume)
        with self._locked():
            self._show_cache = None
            spec = self._read_spec(iqn)
            if spec is None or initiator not in spec.initiators:
                return
            spec = dataclasses.replace(
                spec, initiators=spec.initiators - {initiator})
            self._write_spec(spec)
            state = self._show().get(iqn)
            if state is not None:
                self._sync_acl(state, spec.initiators)

    def validate_connector(self, connector):
        super().validate_connector(connector)
        _check_initiator(connector['initiator'])
        return True

    def extend_target(self, volume):
        """Make a new file size visible: tgtd reads it when a LUN opens."""
        self.reopen_lun(volume)

    def reopen_lun(self, volume, volume_path: Optional[str] = None) -> bool:
        """Re-open the backing file of the volume's LUN in tgtd.

        tgtd keeps its file descriptor when the FUSE daemon dies, so a
        remount alone does not heal the LUN; deleting and re-adding it
        does, and keeps the initiators' sessions. Also used to pick up a
        new size. Returns False when the volume has no target.
        """
        iqn = self._iqn(volume)
        with self._locked():
            self._show_cache = None
            state = self._show().get(iqn)
            if state is None:
                LOG.debug('Volume %s has no target to re-open.',
                          volume['id'])
                return False
            path = volume_path or state.luns.get(LUN)
            if not path:
                spec = self._read_spec(iqn)
                path = spec.path if spec else None
            if not path:
                msg = (_('No backing file known for target %s') % iqn)
                raise exception.TargetUpdateFailed(volume_id=volume['id'],
                                                   message=msg)
            self._reopen(state, path, volume['id'])
        return True

    def reopen_all(self, directory: str) -> int:
        """Re-open every LUN that tgtd serves from a file in ``directory``.

        For a FUSE mount that came back: no volume object is needed, the
        targets come from tgtd and their volume ids from our config files
        (a target without one is not ours and is left alone). A target
        whose LUN a failed attempt removed is found by its config file.
        Every LUN is tried; then the first failure is raised so that the
        caller retries. Returns the number of LUNs re-opened.
        """
        prefix = os.path.normpath(directory) + os.sep
        reopened = 0
        failures = []
        with self._locked():
            self._show_cache = None
            for state in sorted(self._show().values(), key=lambda t: t.tid):
                spec = self._read_spec(state.iqn)
                path = state.luns.get(LUN) or (spec.path if spec else None)
                if not path or not path.startswith(prefix):
                    continue
                if spec is None:
                    LOG.warning('Target %(iqn)s serves %(path)s but has no '
                                'config file in %(dir)s; leaving it alone.',
                                {'iqn': state.iqn, 'path': path,
                                 'dir': self.volumes_dir})
                    continue
                try:
                    self._reopen(state, path, spec.volume_id)
                    reopened += 1
                except exception.CinderException as err:
                    failures.append((spec.volume_id, err))
        if failures:
            volume_id, err = failures[0]
            msg = (_('%(failed)d of %(total)d LUNs in %(dir)s could not be '
                     're-opened, first %(vol)s: %(err)s')
                   % {'failed': len(failures),
                      'total': len(failures) + reopened, 'dir': directory,
                      'vol': volume_id, 'err': err})
            LOG.error(msg)
            raise exception.TargetUpdateFailed(volume_id=volume_id,
                                               message=msg)
        return reopened

    # ------------------------------------------------------------------
    # ISCSITarget's abstract hooks, for callers that use them directly

    def _get_target(self, iqn):
        state = self._show().get(iqn)
        return state.tid if state else None

    def _get_iscsi_target(self, context, vol_id):
        return 0

    def _get_target_and_lun(self, context, volume):
        return 0, LUN

    def create_iscsi_target(self, name, tid, lun, path, chap_auth,
                            **kwargs):
        if not chap_auth:
            chap_auth = (volume_utils.generate_username(),
                         volume_utils.generate_password())
        volume_id = kwargs.get('volume_id') or name.rsplit(':', 1)[-1]
        spec = ExportSpec(iqn=name, volume_id=volume_id, path=path,
                          chap_user=chap_auth[0], chap_secret=chap_auth[1])
        with self._locked():
            self._show_cache = None
            return self._apply(spec).tid

    def remove_iscsi_target(self, tid, lun, vol_id, vol_name, **kwargs):
        iqn = '%s%s' % (self.configuration.target_prefix, vol_name)
        with self._locked():
            self._show_cache = None
            self._delete_target(iqn, vol_id)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, '***')
    return text


def _op_words(cmd: list) -> list:
    """The parts of a command line that name the operation (for errors)."""
    words = []
    for flag in ('--op', '--mode', '--update', '--delete'):
        if flag in cmd:
            i = cmd.index(flag)
            words += cmd[i:i + 2]
    return words


def _attachments(volume) -> list:
    try:
        return list(volume.get('volume_attachment') or [])
    except Exception:  # not loadable (e.g. an orphaned object)
        return []


def _connector_initiator(connector) -> Optional[str]:
    if connector is None:
        return None
    if not isinstance(connector, dict) and hasattr(connector, 'get'):
        # A VolumeAttachment: its connector field holds the dict.
        connector = connector.get('connector')
    if isinstance(connector, str):
        try:
            connector = json.loads(connector)
        except ValueError:
            return None
    if not isinstance(connector, dict):
        return None
    return connector.get('initiator') or None


def _check_initiator(name: str) -> None:
    # The name ends up in tgt-admin's config and shell: allow only names.
    if len(name) > _MAX_INITIATOR_LEN or not _INITIATOR_RE.match(name):
        raise exception.InvalidConnectorException(
            missing=_('a valid iSCSI initiator name'))


def _check_iqn(iqn: str) -> None:
    # The name also names the config file and goes to tgt-admin's shell.
    if not _IQN_RE.match(iqn or ''):
        msg = _('Unsupported characters in the target name %r') % iqn
        raise exception.VolumeBackendAPIException(data=msg)


def _check_spec(spec: ExportSpec) -> None:
    _check_iqn(spec.iqn)
    if not _SAFE_VALUE_RE.match(spec.path or ''):
        msg = (_('Unsupported characters in the backing file %r')
               % spec.path)
        raise exception.VolumeBackendAPIException(data=msg)
    if not os.path.isabs(spec.path):
        msg = _('The backing file %s must be an absolute path') % spec.path
        raise exception.VolumeBackendAPIException(data=msg)
    if not (_CHAP_RE.match(spec.chap_user)
            and _CHAP_RE.match(spec.chap_secret)):
        # Never echo the credentials themselves.
        msg = _('The CHAP credentials of target %s contain unsupported '
                'characters') % spec.iqn
        raise exception.VolumeBackendAPIException(data=msg)
    for name in spec.initiators:
        _check_initiator(name)
