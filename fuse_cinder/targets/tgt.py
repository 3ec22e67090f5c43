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

Every exported volume gets one target with LUN 1. tgtd is changed only
through the narrow entry points of fuse_cinder.privileged.tgt, which run
in an oslo.privsep daemon and talk to tgtd's management socket: no
tgtadm or tgt-admin runs, so the CHAP secret is never on any argv, and
the cinder user needs no root command for tgt (rootwrap admits only the
privsep-helper of that one context). The entry points check their own
work (LUN 1 is the volume's very file, CHAP is bound before the ACL) and
roll a failed export back, so their success is tgtd's state.

Each export also has a record in ``volumes_dir`` (export_record.py): its
CHAP pair, initiators and read-only flag, read back by create_export,
ensure_export, reopen_all and reconcile, and loaded by tgtd's own service
after a host reboot. Writing it changes nothing in a running tgtd.
"""

import contextlib
import dataclasses
import json
import os
import time
from typing import (Any, Callable, Collection, Iterable, Iterator, NoReturn,
                    Optional)

from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import fileutils

from cinder.common import constants
from cinder import exception
from cinder.i18n import _
from cinder import utils
from cinder.volume.targets import iscsi
from cinder.volume import volume_utils

from fuse_cinder import options
from fuse_cinder.privileged import tgt as priv_tgt
from fuse_cinder.targets import export_record as record
from fuse_cinder.targets import tgtd_mgmt

LOG = logging.getLogger(__name__)

#: Every target exports exactly one LUN; LUN 0 is tgtd's controller.
LUN = 1
#: Seconds a tgtd listing may be reused by ensure_export. cinder-volume
#: calls ensure_export for every in-use volume right after start-up; one
#: listing serves that whole burst.
SHOW_CACHE_TTL = 10.0
#: (tgtd's login key, our option) for every target's session parameters.
SESSION_INT_OPTS = (
    ('MaxRecvDataSegmentLength', 'fuse_tgt_max_recv_data_segment_length'),
    ('MaxBurstLength', 'fuse_tgt_max_burst_length'),
    ('FirstBurstLength', 'fuse_tgt_first_burst_length'))
SESSION_BOOL_OPTS = (('ImmediateData', 'fuse_tgt_immediate_data'),
                     ('InitialR2T', 'fuse_tgt_initial_r2t'))


# Attachment statuses that hold no connection any more.
_GONE = ('detached', 'deleted')
# "No failed connection", where None is a failure without an initiator.
_NOTHING = object()

# What the privileged entry points raise: bad arguments, a refusal, or
# tgtd failing, refusing or not answering (tgtd_mgmt).
_CONTROL_ERRORS = (exception.InvalidInput, priv_tgt.TargetRefused,
                   tgtd_mgmt.TgtdError)


def _lun(state: tgtd_mgmt.Target) -> tgtd_mgmt.Lun:
    """The target's volume LUN, empty when tgtd shows none."""
    return state.luns.get(LUN) or tgtd_mgmt.Lun()


def _bsoflags(conf: Any) -> str:
    """iscsi_target_flags (or its deprecated alias) as tgtd takes them.

    Written with ',' or ':' in any order; what the privileged entry
    points refuse (priv_tgt.BSOFLAGS) is refused here at start instead.
    """
    name = 'fuse_tgt_bsoflags'
    value = conf.safe_get(name)
    if value is None:
        name = 'iscsi_target_flags'
        value = (conf.safe_get(name) if options.is_set(conf, name)
                 else options.DEFAULT_BSOFLAGS)
    # tgtd separates open flags with ':'; with ',' it keeps only one.
    flags = ':'.join(sorted(value.replace(',', ':').split(':')))
    if flags not in priv_tgt.BSOFLAGS:
        raise exception.InvalidConfigurationValue(option=name, value=value)
    return flags


def _write_cache(conf: Any) -> bool:
    """iscsi_write_cache, unless the deprecated fuse_tgt_write_cache is set."""
    legacy = conf.safe_get('fuse_tgt_write_cache')
    if legacy is not None:
        return bool(legacy)
    return conf.safe_get('iscsi_write_cache') != 'off'


class TgtFileTarget(iscsi.ISCSITarget):
    """tgt target helper for file-backed volumes, one target per volume.

    Constructed like Cinder's own helpers::

        TgtFileTarget(configuration=conf, db=db)

    ``control`` is the module of privileged tgtd operations
    (fuse_cinder.privileged.tgt); unit tests pass a fake with the same
    six functions.
    """

    # One target per volume: the ACL and CHAP account are per volume.
    SHARED_TARGET_SUPPORT = False

    def __init__(self, *args: Any, control: Any = None,
                 **kwargs: Any) -> None:
        conf = kwargs.get('configuration')
        if conf is not None and hasattr(conf, 'append_config_values'):
            conf.append_config_values(options.tgt_opts)
        super().__init__(*args, **kwargs)
        if kwargs.get('db') is not None:
            self.db = kwargs['db']
        self._control = control or priv_tgt
        self.protocol = constants.ISCSI
        if self.iscsi_protocol not in (None, 'iscsi'):
            raise exception.InvalidConfigurationValue(
                option='target_protocol', value=self.iscsi_protocol)
        self.control_port = int(
            self.configuration.safe_get('fuse_tgt_control_port') or 0)
        self._bsoflags = _bsoflags(self.configuration)
        self._write_cache = _write_cache(self.configuration)
        self._show_cache: Optional[tuple] = None
        # {volume id: initiator} of failed initialize_connection calls,
        # for the remove_export that follows (see _keeps_target).
        self._failed_connections: dict = {}

    @contextlib.contextmanager
    def _locked(self, iqn: str) -> Iterator[None]:
        """Serialise the changes to one volume's record file and target.

        Each change reads the config file, changes tgtd and writes the
        file (the initiators of a multi-attach volume, a re-export); two
        threads doing that for one volume would lose one's update. tgtd
        itself needs no lock: export_target takes a free tid and retries
        one that another process took meanwhile, and a volume (so its
        file) belongs to one cinder-volume process.
        """
        with lockutils.lock('fuse-cinder-tgt-%s' % iqn):
            yield

    # ------------------------------------------------------------------
    # the privileged operations

    def _call(self, what: str, func: Callable[..., Any], *args: Any,
              secrets: Iterable[str] = (),
              expect: tuple[type[Exception], ...] = ()) -> Any:
        """Run one privileged tgtd operation; failures carry no secret.

        The entry points never put a secret in an error; the redaction
        keeps it that way whatever tgtd answers. Exceptions in ``expect``
        reach the caller as they are.
        """
        try:
            return func(self.control_port, *args)
        except expect:
            raise
        except tgtd_mgmt.TgtdTimeout as err:
            msg = (_('tgtd did not answer %(what)s in time (%(err)s); is '
                     'tgtd or the FUSE mount hung?')
                   % {'what': what, 'err': _redact(str(err), secrets)})
        except _CONTROL_ERRORS as err:
            msg = (_('%(what)s failed: %(err)s')
                   % {'what': what, 'err': _redact(str(err), secrets)})
        raise exception.ISCSITargetHelperCommandFailed(error_message=msg)

    def _show(self) -> dict:
        return tgtd_mgmt.parse_targets(self._call('show', self._control.show))

    def _describe(self, iqn: str) -> Optional[tgtd_mgmt.Target]:
        """One target, from the privsep daemon's memory (no listing)."""
        found = self._call(_('looking up %s') % iqn, self._control.describe,
                           iqn)
        if found is None:
            return None
        luns = {}
        if found['path']:
            luns[LUN] = tgtd_mgmt.Lun(
                path=found['path'], scsi_id=found['serial'],
                scsi_sn=found['serial'], bsoflags=found['bsoflags'],
                readonly=found['readonly'])
        return tgtd_mgmt.Target(
            tid=found['tid'], name=found['iqn'], luns=luns,
            acl=list(found['acl']), accounts=list(found['accounts']))

    def _set_acl(self, iqn: str, initiators: Collection[str]) -> bool:
        """Make the target's ACL ``initiators``; False if it has no target.

        The daemon compares with what it knows and asks tgtd only for
        the entries that change.
        """
        try:
            self._call(_('setting the ACL of %s') % iqn,
                       self._control.set_acl, iqn, sorted(initiators),
                       expect=(priv_tgt.TargetMissing,))
        except priv_tgt.TargetMissing:
            return False
        LOG.debug('ACL of target %(iqn)s is now %(acl)s.',
                  {'iqn': iqn, 'acl': record.acl_for(initiators)})
        return True

    def _targets_for_ensure(self) -> dict:
        """tgtd's targets, from one listing shared by an ensure burst."""
        now = time.monotonic()
        if (self._show_cache is not None
                and now - self._show_cache[0] <= SHOW_CACHE_TTL):
            return self._show_cache[1]
        targets = self._show()
        self._show_cache = (now, targets)
        return targets

    def _remember(self, iqn: str, state: Optional[tgtd_mgmt.Target]) -> None:
        """Keep the ensure cache true after this helper changed a target."""
        if self._show_cache is None:
            return
        if state is None:
            self._show_cache[1].pop(iqn, None)
        else:
            self._show_cache[1][iqn] = state

    def _session_params(self) -> dict:
        """The iSCSI login keys every new target gets, as tgtd names them.

        tgtd's defaults send writes in 8 KiB PDUs, each burst after an
        R2T; see DESIGN.rst (LUN I/O). Options left unset (None) keep
        tgtd's own value.
        """
        get = self.configuration.safe_get
        params: dict = {}
        for key, name in SESSION_INT_OPTS:
            if get(name) is not None:
                params[key] = int(get(name))
        for key, name in SESSION_BOOL_OPTS:
            if get(name) is not None:
                params[key] = 'Yes' if get(name) else 'No'
        return params

    # ------------------------------------------------------------------
    # naming, credentials, config files

    def _iqn(self, volume: Any) -> str:
        """The volume's target name: as exported, else as it would be."""
        location = volume.get('provider_location')
        if location and len(location.split(' ')) > 1:
            iqn = location.split(' ')[1]
        else:
            iqn = '%s%s' % (self.configuration.target_prefix, volume['name'])
        record.check_iqn(iqn)
        return iqn

    def _conf_path(self, iqn: str) -> str:
        name = iqn.rsplit(':', 1)[-1]
        return os.path.join(self.volumes_dir, name + record.CONF_SUFFIX)

    @staticmethod
    def _chap_for(volume: Any) -> Optional[tuple]:
        """The volume's CHAP pair, kept across exports.

        Read from the volume alone: Cinder hands every target call a
        Volume object loaded from its database, so the second read of the
        same row that ISCSITarget._get_target_chap_auth makes only cost
        each export a query (8% of an export's CPU in the all-in-one).
        """
        auth = volume.get('provider_auth')
        if auth:
            parts = auth.split()
            if len(parts) == 3 and parts[0] == 'CHAP':
                return parts[1], parts[2]
        return None

    def _read_spec(self, iqn: str) -> Optional[record.ExportSpec]:
        try:
            with open(self._conf_path(iqn)) as f:
                return record.parse_config(f.read())
        except FileNotFoundError:
            return None

    def _write_spec(self, spec: record.ExportSpec) -> bool:
        """Write the config file if it changed; True if it was written."""
        record.check_spec(spec)
        content = record.render_config(spec, write_cache=self._write_cache,
                                       bsoflags=self._bsoflags,
                                       session_params=self._session_params())
        path = self._conf_path(spec.iqn)
        try:
            with open(path) as f:
                if f.read() == content:
                    return False
        except FileNotFoundError:
            fileutils.ensure_tree(self.volumes_dir, mode=0o750)
        # Cinder's writer: a 0600 temporary file named "<name>.conf<random>"
        # (never matched by tgt's "include dir/*.conf"), synced, renamed.
        # Its three syncs run in a native thread (Cinder's tpool_wrap):
        # under eventlet they stalled every other request of the service,
        # 9% of an export's time in the all-in-one.
        utils.tpool_wrap(utils.robust_file_write)(
            self.volumes_dir, os.path.basename(path), content)
        LOG.debug('Wrote tgt config %s for target %s.', path, spec.iqn)
        return True

    def _remove_conf(self, iqn: str) -> None:
        try:
            os.unlink(self._conf_path(iqn))
        except FileNotFoundError:
            pass

    @staticmethod
    def _attached_initiators(volume: Any) -> set:
        names = set()
        for attachment in _attachments(volume):
            if attachment.get('attach_status') in ('attached', 'attaching'):
                name = _connector_initiator(attachment)
                if isinstance(name, str):
                    names.add(name)
        return names

    # ------------------------------------------------------------------
    # tgtd state changes (callers hold self._locked(iqn))

    def _apply(self, spec: record.ExportSpec,
               state: Optional[tgtd_mgmt.Target] = None,
               known: bool = False) -> tgtd_mgmt.Target:
        """Make tgtd export ``spec``; the record file is written first.

        ``state`` is the target as tgtd listed it, if ``known``; else
        export_target is tried first and tgtd is listed only when a target
        of that name exists with other settings. On failure nothing of this
        export is left in tgtd (export_target rolls back) and a config file
        this call created is removed.
        """
        new_file = not os.path.exists(self._conf_path(spec.iqn))
        self._write_spec(spec)
        try:
            tid = self._export(spec, state, known)
        except Exception as err:
            if new_file:
                self._remove_conf(spec.iqn)
            if not isinstance(err, exception.ISCSITargetHelperCommandFailed):
                raise
            LOG.error('Could not export volume %(vol)s: %(err)s',
                      {'vol': spec.volume_id, 'err': err.msg})
            raise exception.ISCSITargetCreateFailed(
                volume_id=spec.volume_id, message=err.msg)
        lun = tgtd_mgmt.Lun(path=spec.path, scsi_id=spec.serial,
                            scsi_sn=spec.serial,
                            bsoflags=self._bsoflags,
                            readonly=spec.readonly)
        return tgtd_mgmt.Target(
            tid=tid, name=spec.iqn, luns={LUN: lun},
            acl=record.acl_for(spec.initiators), accounts=[spec.chap_user],
            nexus=bool(state and state.nexus))

    def _export(self, spec: record.ExportSpec,
                state: Optional[tgtd_mgmt.Target], known: bool) -> int:
        """export_target, after replacing a target that is not ``spec``.

        Such a target is deleted when no initiator is logged in, else only
        its LUN is re-opened (e.g. one that tgtd re-created at boot before
        the FUSE mount was back), which keeps the sessions.
        """
        if not known:
            try:
                return self._export_target(spec,
                                           expect=(priv_tgt.TargetConflict,))
            except priv_tgt.TargetConflict:
                state = self._show().get(spec.iqn)
        if state is not None and not state.serves(
                LUN, spec.path, spec.chap_user, self._bsoflags, spec.serial,
                spec.readonly):
            if state.nexus:
                self._call(_('re-opening the LUN of %s') % spec.iqn,
                           self._control.reopen_lun, spec.iqn, spec.path,
                           self._bsoflags, self._write_cache, spec.serial,
                           spec.readonly)
            else:
                LOG.info('Replacing target %(iqn)s, which does not serve '
                         '%(path)s as configured.',
                         {'iqn': spec.iqn, 'path': spec.path})
                self._call(_('deleting %s') % spec.iqn,
                           self._control.delete_target, spec.iqn)
        return self._export_target(spec)

    def _export_target(self, spec: record.ExportSpec,
                       expect: tuple[type[Exception], ...] = ()) -> int:
        return self._call(
            _('exporting %(path)s as LUN %(lun)d of target %(iqn)s')
            % {'path': spec.path, 'lun': LUN, 'iqn': spec.iqn},
            self._control.export_target, spec.iqn, spec.path,
            spec.chap_user, spec.chap_secret, sorted(spec.initiators),
            self._bsoflags, self._write_cache, spec.serial, spec.readonly,
            self._session_params(),
            secrets=(spec.chap_secret,), expect=expect)

    def _sync_acl(self, state: tgtd_mgmt.Target,
                  initiators: Collection[str]) -> None:
        """Make the live ACL match the config file, if it does not yet.

        With initiators: their names plus record.NO_ADDRESS. Without: ``ALL``
        (CHAP only). set_acl binds new entries before it unbinds old ones,
        so an initiator that stays allowed is never locked out meanwhile.
        """
        want = record.acl_for(initiators)
        if sorted(state.acl) == sorted(want):
            return
        if self._set_acl(state.name, initiators):
            state.acl = want

    def _delete_target(self, iqn: str, volume_id: str) -> None:
        """Delete target, CHAP account and config file; gone is fine.

        delete_target drops the accounts only this target used, and the
        account of the config file too: tgtd may hold it without the
        target (a half-made export of a crashed privsep daemon), and the
        secret must not outlive the export. One another target uses is
        kept.
        """
        spec = self._read_spec(iqn)
        try:
            self._call(_('deleting %s') % iqn, self._control.delete_target,
                       iqn, spec.chap_user if spec is not None else None)
        except exception.ISCSITargetHelperCommandFailed as err:
            LOG.error('Could not remove the target of volume %(vol)s: '
                      '%(err)s', {'vol': volume_id, 'err': err.msg})
            raise exception.ISCSITargetRemoveFailed(volume_id=volume_id,
                                                    message=err.msg)
        self._remove_conf(iqn)
        LOG.info('Removed target %s.', iqn)

    def _reopen(self, iqn: str, path: str, volume_id: str,
                readonly: bool) -> None:
        """Replace LUN 1 by a fresh one on ``path``; sessions stay up."""
        self._call(_('re-opening LUN %(lun)d of %(iqn)s on %(path)s')
                   % {'lun': LUN, 'iqn': iqn, 'path': path},
                   self._control.reopen_lun, iqn, path, self._bsoflags,
                   self._write_cache, volume_id.replace('-', ''), readonly)
        LOG.info('Re-opened LUN %(lun)d of target %(iqn)s on %(path)s.',
                 {'lun': LUN, 'iqn': iqn, 'path': path})

    # ------------------------------------------------------------------
    # Target API used by the driver

    def create_export(self, context: Any, volume: Any, volume_path: str,
                      connector: Optional[dict] = None,
                      readonly: bool = False) -> dict:
        """Export the volume file; returns location and CHAP like LVM.

        ``connector`` is optional: with it the target is restricted to
        that initiator from the start instead of at initialize_connection.
        Initiators of other live attachments (multi-attach) are kept.
        ``readonly`` serves the LUN read-only, also after any re-export.
        """
        iqn = '%s%s' % (self.configuration.target_prefix, volume['name'])
        record.check_iqn(iqn)
        initiator = _requested_initiator(connector)
        chap = self._chap_for(volume) or (
            volume_utils.generate_username(),
            volume_utils.generate_password())
        with self._locked(iqn):
            self._show_cache = None
            old = self._read_spec(iqn)
            initiators = set(old.initiators) if old else set()
            if initiator:
                initiators.add(initiator)
            spec = record.ExportSpec(
                iqn=iqn, volume_id=volume['id'], path=volume_path,
                chap_user=chap[0], chap_secret=chap[1],
                initiators=frozenset(initiators), readonly=bool(readonly))
            state = self._apply(spec)
        location = self._iscsi_location(
            self.configuration.target_ip_address, state.tid, iqn, LUN,
            self.configuration.target_secondary_ip_addresses)
        LOG.debug('Exported volume %(vol)s as %(loc)s.',
                  {'vol': volume['id'], 'loc': location})
        return {'location': location,
                'auth': self._iscsi_authentication('CHAP', *chap)}

    def ensure_export(self, context: Any, volume: Any,
                      volume_path: str) -> Optional[dict]:
        """Re-create the export if tgtd lost it (tgtd or host restart).

        Cheap when the target is there: one shared tgtd listing per
        start-up burst and a comparison of the config file.
        """
        iqn = self._iqn(volume)
        with self._locked(iqn):
            spec = self._read_spec(iqn)
            chap = self._chap_for(volume)
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
            want = record.ExportSpec(
                iqn=iqn, volume_id=volume['id'], path=volume_path,
                chap_user=chap[0], chap_secret=chap[1], initiators=initiators,
                readonly=spec is not None and spec.readonly)
            state = self._targets_for_ensure().get(iqn)
            if state is not None and _lun(state).path == volume_path:
                self._write_spec(want)
                self._sync_acl(state, want.initiators)
                LOG.debug('Target %s is present in tgtd.', iqn)
            else:
                LOG.info('Target %(iqn)s of volume %(vol)s is missing in '
                         'tgtd; re-creating it.',
                         {'iqn': iqn, 'vol': volume['id']})
                state = self._apply(want, state, known=True)
                self._remember(iqn, state)
        if new_auth:
            return {'provider_auth': new_auth}
        return None

    def remove_export(self, context: Any, volume: Any) -> None:
        """Delete the target, its CHAP account and its config file.

        Unless another attachment still uses the target (multi-attach):
        Cinder calls remove_export after each legacy detach and after a
        failed initialize_connection, also while other attachments are
        live (see _keeps_target). Idempotent: a target or file that is
        already gone is fine.
        """
        iqn = self._iqn(volume)
        with self._locked(iqn):
            self._show_cache = None
            if self._keeps_target(volume, iqn):
                return
            self._delete_target(iqn, volume['id'])

    def _keeps_target(self, volume: Any, iqn: str) -> bool:
        """Whether remove_export must leave the target to other users.

        The attachments listed with the volume still include the one
        going away (detach, attachment delete), so the target stays when
        more than one has a connection. After a failed
        initialize_connection the new connection is not listed (Cinder
        records the connector only on success): the target then stays
        for any live connection, and only the new initiator is withdrawn
        unless a live attachment uses it.
        """
        live = _live_connectors(volume)
        failed = self._failed_connections.pop(volume['id'], _NOTHING)
        if failed is not _NOTHING:
            if not live:
                return False
            keep = {c['initiator'] for c in live}
            spec = self._read_spec(iqn)
            if failed and spec is not None and failed not in keep:
                self._withdraw(spec, failed)
            LOG.info('Keeping target %(iqn)s after a failed connection: '
                     'volume %(vol)s has %(n)d other live attachments.',
                     {'iqn': iqn, 'vol': volume['id'], 'n': len(live)})
            return True
        if len(live) > 1:
            LOG.info('Keeping target %(iqn)s: volume %(vol)s has %(n)d '
                     'more live attachments.',
                     {'iqn': iqn, 'vol': volume['id'], 'n': len(live) - 1})
            return True
        return False

    def _withdraw(self, spec: record.ExportSpec, initiator: str) -> None:
        """Take the initiator of a failed connection off the ACL.

        Best effort: a failure here must not hide the one Cinder is
        handling; CHAP still guards the target.
        """
        spec = dataclasses.replace(
            spec, initiators=spec.initiators - {initiator})
        try:
            self._write_spec(spec)
            self._set_acl(spec.iqn, spec.initiators)
        except exception.CinderException as err:
            LOG.warning('Could not take %(ini)s off the ACL of %(iqn)s: '
                        '%(err)s', {'ini': initiator, 'iqn': spec.iqn,
                                    'err': err})

    def initialize_connection(self, volume: Any, connector: dict) -> dict:
        """Restrict the target to this initiator, then return the info.

        With multi-attach the initiator joins those already allowed. A
        failure is remembered for the remove_export that Cinder calls
        next, which then leaves other attachments their target.
        """
        initiator = None
        try:
            initiator = _requested_initiator(connector)
            info = self._initialize(volume, connector, initiator)
        except Exception:
            self._failed_connections[volume['id']] = initiator
            raise
        self._failed_connections.pop(volume['id'], None)
        return info

    def _initialize(self, volume: Any, connector: dict,
                    initiator: Optional[str]) -> dict:
        if initiator:
            iqn = self._iqn(volume)
            with self._locked(iqn):
                self._show_cache = None
                spec = self._read_spec(iqn)
                if spec is None:
                    msg = _('Volume %s is not exported; cannot allow an '
                            'initiator on it') % volume['id']
                    raise exception.VolumeBackendAPIException(data=msg)
                spec = dataclasses.replace(
                    spec, initiators=spec.initiators | {initiator})
                self._write_spec(spec)
                if not self._set_acl(iqn, spec.initiators):
                    msg = _('Target %s is not in tgtd') % iqn
                    raise exception.VolumeBackendAPIException(data=msg)
        return super().initialize_connection(volume, connector)

    def terminate_connection(self, volume: Any, connector: Optional[dict],
                             **kwargs: Any) -> bool:
        """Take the initiator off the ACL unless it still has attachments.

        Several attachments may come from one host (multi-attach); the
        host's initiator stays allowed until its last one goes
        (are_same_connector, as Cinder's LVM driver does). Without a
        connector (forced detach) the ACL is left alone: remove_export
        follows. Returns whether other attachments share the target
        (the one going is still listed), which tells Cinder's attachment
        delete not to call remove_export.
        """
        live = _live_connectors(volume)
        shared = len(live) > 1
        initiator = _requested_initiator(connector)
        if not initiator:
            return shared
        same = [c for c in live if self.are_same_connector(c, connector)]
        if len(same) > 1:
            LOG.debug('Initiator %(ini)s still has %(n)d attachments of '
                      'volume %(vol)s; keeping it on the ACL.',
                      {'ini': initiator, 'n': len(same) - 1,
                       'vol': volume['id']})
            return True
        iqn = self._iqn(volume)
        with self._locked(iqn):
            self._show_cache = None
            spec = self._read_spec(iqn)
            if spec is None or initiator not in spec.initiators:
                return shared
            spec = dataclasses.replace(
                spec, initiators=spec.initiators - {initiator})
            self._write_spec(spec)
            self._set_acl(iqn, spec.initiators)
        return shared

    def validate_connector(self, connector: dict) -> bool:
        super().validate_connector(connector)
        record.check_initiator(connector['initiator'])
        return True

    def extend_target(self, volume: Any) -> None:
        """Make a new file size visible: tgtd reads it when a LUN opens."""
        self.reopen_lun(volume)

    def reopen_lun(self, volume: Any,
                   volume_path: Optional[str] = None) -> bool:
        """Re-open the backing file of the volume's LUN in tgtd.

        tgtd keeps its file descriptor when the FUSE daemon dies, so a
        remount alone does not heal the LUN; deleting and re-adding it
        does, and keeps the initiators' sessions. Also used to pick up a
        new size. Returns False when the volume has no target.
        """
        iqn = self._iqn(volume)
        with self._locked(iqn):
            self._show_cache = None
            state = self._describe(iqn)
            if state is None:
                LOG.debug('Volume %s has no target to re-open.',
                          volume['id'])
                return False
            spec = self._read_spec(iqn)
            path = (volume_path or _lun(state).path or
                    (spec.path if spec else None))
            if not path:
                msg = (_('No backing file known for target %s') % iqn)
                raise exception.TargetUpdateFailed(volume_id=volume['id'],
                                                   message=msg)
            readonly = spec.readonly if spec else _lun(state).readonly
            self._reopen(iqn, path, volume['id'], readonly)
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
        self._show_cache = None
        for state in sorted(self._show().values(), key=lambda t: t.tid):
            with self._locked(state.name):
                spec = self._read_spec(state.name)
                path = _lun(state).path or (spec.path if spec else None)
                if not path or not path.startswith(prefix):
                    continue
                if spec is None:
                    LOG.warning('Target %(iqn)s serves %(path)s but has no '
                                'config file in %(dir)s; leaving it alone.',
                                {'iqn': state.name, 'path': path,
                                 'dir': self.volumes_dir})
                    continue
                try:
                    self._reopen(state.name, path, spec.volume_id,
                                 spec.readonly)
                    reopened += 1
                except exception.CinderException as err:
                    failures.append((spec.volume_id, err))
        if failures:
            volume_id, first = failures[0]
            msg = (_('%(failed)d of %(total)d LUNs in %(dir)s could not be '
                     're-opened, first %(vol)s: %(err)s')
                   % {'failed': len(failures),
                      'total': len(failures) + reopened, 'dir': directory,
                      'vol': volume_id, 'err': first})
            LOG.error(msg)
            raise exception.TargetUpdateFailed(volume_id=volume_id,
                                               message=msg)
        return reopened

    def _records(self, directory: str) -> list:
        """The exports whose backing file lies in ``directory``.

        Read from the config files in volumes_dir (local disk, written by
        this service); several backends may share the directory.
        """
        prefix = os.path.normpath(directory) + os.sep
        try:
            files = sorted(os.listdir(self.volumes_dir))
        except FileNotFoundError:
            return []
        specs = []
        for name in files:
            if name.startswith('.') or not name.endswith(record.CONF_SUFFIX):
                continue
            try:
                with open(os.path.join(self.volumes_dir, name)) as f:
                    spec = record.parse_config(f.read())
            except OSError:
                continue
            if spec is not None and spec.path.startswith(prefix):
                specs.append(spec)
        return specs

    def reconcile(self, directory: str) -> int:
        """Re-create the exports of ``directory`` that tgtd has lost.

        A tgtd that restarted empty (crash, package upgrade) forgets every
        target; the config files say what cinder-volume exported and has
        not removed. One tgtd listing per call, none when this backend
        has no export. Each lost export is made again with its recorded
        CHAP account and initiators, under its volume's lock and from its
        record read again there, so a removal that ran meanwhile wins.
        Returns the number re-created; a failure is logged and tried
        again at the next call.
        """
        records = self._records(directory)
        if not records:
            return 0
        live = self._show()
        restored = 0
        for listed in records:
            if listed.iqn in live:
                continue
            with self._locked(listed.iqn):
                spec = self._read_spec(listed.iqn)
                if spec is None:
                    continue
                LOG.warning('Target %(iqn)s of volume %(vol)s is missing in '
                            'tgtd; re-creating it.',
                            {'iqn': spec.iqn, 'vol': spec.volume_id})
                try:
                    self._apply(spec, None, known=True)
                except exception.CinderException as err:
                    LOG.error('Could not re-create target %(iqn)s: %(err)s',
                              {'iqn': spec.iqn, 'err': err})
                    continue
                restored += 1
        self._show_cache = None
        return restored

    # ------------------------------------------------------------------
    # ISCSITarget's abstract hooks. Only ISCSITarget's own create_export,
    # remove_export and ensure_export call the last four, and this class
    # replaces those; show_target uses _get_target.

    def _get_target(self, iqn: str) -> Optional[int]:
        state = self._describe(iqn)
        return state.tid if state else None

    def _unused_hook(self, name: str) -> NoReturn:
        raise NotImplementedError(
            '%s is not used by TgtFileTarget: its create_export, '
            'remove_export and ensure_export make and remove targets' % name)

    def _get_iscsi_target(self, context: Any, vol_id: str) -> NoReturn:
        self._unused_hook('_get_iscsi_target')

    def _get_target_and_lun(self, context: Any, volume: Any) -> NoReturn:
        self._unused_hook('_get_target_and_lun')

    def create_iscsi_target(self, name: str, tid: int, lun: int, path: str,
                            chap_auth: Any, **kwargs: Any) -> NoReturn:
        self._unused_hook('create_iscsi_target')

    def remove_iscsi_target(self, tid: int, lun: int, vol_id: str,
                            vol_name: str, **kwargs: Any) -> NoReturn:
        self._unused_hook('remove_iscsi_target')


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, '***')
    return text


def _attachments(volume: Any) -> list:
    try:
        return list(volume.get('volume_attachment') or [])
    except Exception:  # not loadable (e.g. an orphaned object)
        return []


def _live_connectors(volume: Any) -> list:
    """The connectors of the volume's attachments that made a connection.

    An attachment gets its connector when its connection is made, and
    keeps it until the attachment is deleted; one that is only reserved
    has none, and one that is detached no longer counts.
    """
    live = []
    for attachment in _attachments(volume):
        if attachment.get('attach_status') in _GONE:
            continue
        connector = _connector_dict(attachment.get('connector'))
        if connector and connector.get('initiator'):
            live.append(connector)
    return live


def _connector_dict(connector: Any) -> Optional[dict]:
    """A connector as a dict, also from the JSON of a DB row."""
    if isinstance(connector, str):
        try:
            connector = json.loads(connector)
        except ValueError:
            return None
    return connector if isinstance(connector, dict) else None


def _connector_initiator(connector: Any) -> Any:
    """The ``initiator`` of a connector dict, JSON or attachment, or None.

    Not checked: callers that act on it use _requested_initiator.
    """
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


def _requested_initiator(connector: Any) -> Optional[str]:
    """The connector's initiator name, checked; None if it has none."""
    initiator = _connector_initiator(connector)
    if initiator is not None:
        record.check_initiator(initiator)
    return initiator
