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
"""Narrow privileged tgtd operations for volume files on a FUSE mount.

These run as root in the privsep daemon, so they trust no argument: each
is type checked and fully matched against a strict pattern. They act
only on "our" targets: named ``<prefix>:volume-<uuid>`` and serving at
most LUN 1, from a ``volume-<uuid>`` file. Backing paths are judged by
name and by /proc/self/mountinfo alone. The daemon never stats, opens or
resolves anything on the FUSE mount: a hung FUSE daemon would wedge it.
What tgtd really opened is read from ``/proc/<tgtd>/fd`` afterwards,
which procfs answers without asking the file's filesystem.

A target only admits initiators once CHAP is bound: tgtd lets any
initiator in when a target has no account, and no initiator while its
ACL is empty, so the ACL always comes last.

CHAP secrets reach tgtd only in the socket request: never on an argv,
in a log line or in an exception.
"""

import dataclasses
import os
import re
import time
from typing import Optional

from oslo_log import log as logging

from cinder import exception
from cinder.i18n import _

from fuse_cinder import mount
from fuse_cinder import privileged
from fuse_cinder.target import tgtd_mgmt

LOG = logging.getLogger(__name__)

#: The one LUN every target exports; LUN 0 is tgtd's controller.
LUN = 1
#: Seconds each tgtd request may take (tgtd hangs with a hung FUSE mount).
TIMEOUT = 30.0
ALL_ADDRESSES = 'ALL'
#: An ACL address no initiator has: keeps initiator names decisive, since
#: tgtd admits an initiator whose name *or* address is listed.
NO_ADDRESS = '0.0.0.0/32'
#: Mode page 8 (caching) with WCE cleared, as tgt-admin sends for
#: ``write-cache off`` (what the config files say for tgtd's boot).
WRITE_CACHE_OFF_MODE_PAGE = ('8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:'
                             '0xff:0x80:0x14:0:0:0:0:0:0')
BSOFLAGS = ('', 'direct', 'sync', 'direct:sync')
MAX_INITIATORS = 64
#: Tries for a free tid before giving up (each lost race costs one).
TID_ATTEMPTS = 64
#: Tries to delete a LUN that still has commands in flight.
LUN_BUSY_ATTEMPTS = 5
MOUNTINFO = '/proc/self/mountinfo'

_UUID = r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
_TARGET_RE = re.compile(
    r'(?:iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9][a-z0-9.-]*(?::[a-z0-9][a-z0-9._-]*)*'
    r'|eui\.[0-9a-f]{16}|naa\.[0-9a-f]{16}(?:[0-9a-f]{16})?)'
    r':volume-' + _UUID)
_PATH_RE = re.compile(r'(?:/[A-Za-z0-9_.+-]+)+/volume-' + _UUID)
# RFC 3720 names, limited to the characters real initiators use.
_INITIATOR_RE = re.compile(
    r'iqn\.[0-9]{4}-[0-9]{2}\.[A-Za-z0-9.-]+(?::[A-Za-z0-9.:_-]+)?'
    r'|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16}(?:[0-9A-Fa-f]{16})?')
_CHAP_RE = re.compile(r'[A-Za-z0-9._-]{1,255}')
_SERIAL_RE = re.compile(r'[0-9a-f]{32}')
_MAX_NAME = 223
_MAX_PATH = 4096


class TargetRefused(exception.CinderException):
    """The helper will not act on this target or file."""

    message = _('tgt request refused: %(reason)s')


@dataclasses.dataclass(frozen=True)
class MountPoint:
    """One line of a mountinfo file, as far as the checks go."""

    mount_id: int
    mount_point: str
    fs_type: str


# -- validation -----------------------------------------------------------

def _invalid(what: str, why: str):
    return exception.InvalidInput(reason=_('%(what)s %(why)s')
                                  % {'what': what, 'why': why})


def _check_str(value, what: str, pattern, max_len: int) -> str:
    if type(value) is not str:
        raise _invalid(what, _('must be a string'))
    if len(value) > max_len or not pattern.fullmatch(value):
        raise _invalid(what, _('has an unsupported form'))
    return value


def check_port(port) -> int:
    if type(port) is not int or not 0 <= port <= 65535:
        raise _invalid(_('The tgtd control port'),
                       _('must be an int from 0 to 65535'))
    return port


def check_iqn(iqn) -> str:
    """``<prefix>:volume-<uuid>`` with a strict iqn./eui./naa. prefix."""
    return _check_str(iqn, _('The target name'), _TARGET_RE, _MAX_NAME)


def check_initiators(initiators) -> tuple:
    if not isinstance(initiators, (list, tuple)) or \
            len(initiators) > MAX_INITIATORS:
        raise _invalid(_('The initiators'),
                       _('must be a list of at most %d names')
                       % MAX_INITIATORS)
    for name in initiators:
        _check_str(name, _('An initiator name'), _INITIATOR_RE, _MAX_NAME)
    if len(set(initiators)) != len(initiators):
        raise _invalid(_('The initiators'), _('repeat a name'))
    return tuple(initiators)


def check_chap(user, secret) -> None:
    _check_str(user, _('The CHAP user'), _CHAP_RE, 255)
    if type(secret) is not str or not _CHAP_RE.fullmatch(secret):
        # Never echo the secret, not even its length.
        raise _invalid(_('The CHAP secret'), _('has an unsupported form'))


def check_bsoflags(bsoflags) -> str:
    if type(bsoflags) is not str or bsoflags not in BSOFLAGS:
        raise _invalid(_('bsoflags'), _('must be one of %s') % (BSOFLAGS,))
    return bsoflags


def check_serial(serial) -> str:
    return _check_str(serial, _('The serial'), _SERIAL_RE, 32)


def check_flag(value, what: str) -> bool:
    if type(value) is not bool:
        raise _invalid(what, _('must be a bool'))
    return value


def is_volume_path(path) -> bool:
    """Absolute, normalised, no ``..``, ending in ``volume-<uuid>``."""
    return (type(path) is str and len(path) <= _MAX_PATH
            and bool(_PATH_RE.fullmatch(path))
            and os.path.normpath(path) == path
            and not {'.', '..'} & set(path.split('/')))


def read_mountinfo(filename: str = MOUNTINFO) -> list:
    """[MountPoint] of a mountinfo file; procfs never blocks."""
    entries = []
    with open(filename) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 7 or '-' not in fields[6:]:
                continue
            fs_type = fields[fields.index('-', 6) + 1]
            entries.append(MountPoint(int(fields[0]),
                                      mount._unescape(fields[4]), fs_type))
    return entries


def check_path(path, mountinfo: str = MOUNTINFO) -> str:
    """A volume file name whose mount (by name) is a FUSE filesystem.

    The mount holding the path itself counts, so a file bind-mounted over
    a volume name is refused too.
    """
    if not is_volume_path(path):
        raise _invalid(_('The backing file'),
                       _('must be an absolute normalised path ending in '
                         'volume-<uuid>'))
    found = mount.find_mount(path, read_mountinfo(mountinfo))
    if found is None or not found.fs_type.startswith('fuse'):
        raise _invalid(_('The backing file %s') % path,
                       _('is not on a FUSE mount'))
    return path


def is_ours(target: tgtd_mgmt.Target) -> bool:
    """Our name shape, and nothing but a volume file as LUN 1."""
    if not _TARGET_RE.fullmatch(target.name) or set(target.luns) - {0, LUN}:
        return False
    lun = target.luns.get(LUN)
    return lun is None or is_volume_path(lun.path)


# -- tgtd helpers ---------------------------------------------------------

def _client(port: int) -> tgtd_mgmt.TgtdClient:
    return tgtd_mgmt.TgtdClient(port, timeout=TIMEOUT)


def _ours(targets: dict, iqn: str) -> Optional[tgtd_mgmt.Target]:
    target = targets.get(iqn)
    if target is not None and not is_ours(target):
        raise TargetRefused(reason=_('target %s is not a fuse_cinder '
                                     'volume target') % iqn)
    return target


def _lun_params(serial: str, write_cache: bool, readonly: bool) -> str:
    params = 'scsi_id=%s,scsi_sn=%s' % (serial, serial)
    if not write_cache:
        params += ',mode_page=' + WRITE_CACHE_OFF_MODE_PAGE
    if readonly:
        params += ',readonly=1'
    return params


def _open_files(pid: int) -> set:
    """{(fd, target)} of a process, from procfs (needs CAP_SYS_PTRACE)."""
    fd_dir = '/proc/%d/fd' % pid
    found = set()
    for fd in os.listdir(fd_dir):
        try:
            found.add((fd, os.readlink(os.path.join(fd_dir, fd))))
        except OSError:
            pass  # closed meanwhile
    return found


def _fd_mount_id(pid: int, fd: str) -> Optional[int]:
    with open('/proc/%d/fdinfo/%s' % (pid, fd)) as f:
        for line in f:
            key, _sep, value = line.partition(':')
            if key == 'mnt_id':
                return int(value)
    return None


def _check_opened(pid: int, before: set, path: str) -> None:
    """tgtd's new descriptors must include ``path`` itself, on FUSE.

    readlink of /proc/<pid>/fd names the file actually opened, so a
    ``volume-<uuid>`` symlink shows as its target and fails here; the
    mount is looked up in tgtd's own mount namespace.
    """
    fds = [fd for fd, link in _open_files(pid) - before if link == path]
    mounts = {m.mount_id: m for m in
              read_mountinfo('/proc/%d/mountinfo' % pid)}
    try:
        on_fuse = [fd for fd in fds
                   if getattr(mounts.get(_fd_mount_id(pid, fd)), 'fs_type',
                              '').startswith('fuse')]
    except OSError:
        on_fuse = []
    if not fds or on_fuse != fds:
        raise TargetRefused(reason=_('tgtd did not open %s itself on a '
                                     'FUSE mount (a symbolic link?)') % path)


def _new_target(client: tgtd_mgmt.TgtdClient, iqn: str,
                targets: dict) -> int:
    """Create the target on the lowest free tid; no lock needed.

    tgtd answers "target exists" for a tid another process took since
    our listing; the next one is tried, so two processes never share one.
    """
    used = {t.tid for t in targets.values()}
    tid = 1
    for _attempt in range(TID_ATTEMPTS):
        while tid in used:
            tid += 1
        try:
            client.new_target(tid, iqn)
            return tid
        except tgtd_mgmt.TgtdError as err:
            if err.code != tgtd_mgmt.TARGET_EXIST:
                raise
        fresh = client.targets()
        if iqn in fresh:
            raise TargetRefused(reason=_('target %s was created by someone '
                                         'else meanwhile') % iqn)
        used |= {t.tid for t in fresh.values()} | {tid}
    raise TargetRefused(reason=_('no free tid after %d attempts')
                        % TID_ATTEMPTS)


def _new_account(client: tgtd_mgmt.TgtdClient, user: str,
                 secret: str) -> None:
    """Create the account, replacing a leftover one of that user.

    tgtd unbinds a deleted account from every target, which would leave
    a target without CHAP; an account some target uses is never replaced.
    """
    try:
        client.new_account(user, secret)
        return
    except tgtd_mgmt.TgtdError as err:
        if err.code != tgtd_mgmt.USER_EXIST:
            raise
    users = [t.name for t in client.targets().values() if user in t.accounts]
    if users:
        raise TargetRefused(reason=_('CHAP user %(user)s is in use by '
                                     '%(targets)s')
                            % {'user': user, 'targets': ', '.join(users)})
    LOG.info('Replacing the unused tgtd account %s.', user)
    client.delete_account(user)
    client.new_account(user, secret)


def _sync_acl(client: tgtd_mgmt.TgtdClient, target: tgtd_mgmt.Target,
              initiators: tuple) -> None:
    """Make the ACL exactly the initiators (plus NO_ADDRESS), or ALL.

    New entries are bound before old ones go, so an initiator that stays
    allowed is never locked out meanwhile.
    """
    if not target.accounts:
        raise TargetRefused(reason=_('target %s has no CHAP account; it '
                                     'gets no ACL') % target.name)
    want_names = set(initiators)
    want_addrs = {NO_ADDRESS} if want_names else {ALL_ADDRESSES}
    have = set(target.acl)
    have_names = {e for e in have if _INITIATOR_RE.fullmatch(e)}
    have_addrs = have - have_names
    tid = target.tid
    for name in sorted(want_names - have_names):
        client.bind_initiator_name(tid, name)
    for addr in sorted(want_addrs - have_addrs):
        client.bind_initiator_address(tid, addr)
    for addr in sorted(have_addrs - want_addrs):
        client.unbind_initiator_address(tid, addr)
    for name in sorted(have_names - want_names):
        client.unbind_initiator_name(tid, name)


def _add_lun(client: tgtd_mgmt.TgtdClient, pid: int, tid: int, path: str,
             bsoflags: str, write_cache: bool, serial: str,
             readonly: bool) -> None:
    """LUN 1 on ``path``, proven to be that very file, with its params."""
    before = _open_files(pid)
    client.new_lun(tid, LUN, path, bstype='rdwr', bsoflags=bsoflags)
    try:
        _check_opened(pid, before, path)
    except Exception:
        client.delete_lun(tid, LUN)
        raise
    client.update_lun(tid, LUN, _lun_params(serial, write_cache, readonly))


def _tgtd_pid(client: tgtd_mgmt.TgtdClient) -> int:
    pid, uid, gid = client.peer()
    if uid or gid:
        raise TargetRefused(reason=_('the tgtd socket is not served by '
                                     'root'))
    return pid


def _same_export(target: tgtd_mgmt.Target, path: str, chap_user: str,
                 bsoflags: str, serial: str, readonly: bool) -> bool:
    lun = target.luns.get(LUN)
    return (lun is not None and lun.path == path
            and target.accounts == [chap_user] and lun.scsi_sn == serial
            and set(lun.bsoflags.split(':')) == set(bsoflags.split(':'))
            and (lun.readonly == 'Yes') == readonly)


def _rollback(client: tgtd_mgmt.TgtdClient, tid: Optional[int],
              user: Optional[str]) -> None:
    """Undo a failed export; errors here must not hide the first one."""
    steps = []
    if tid is not None:
        steps.append(lambda: client.delete_target(tid, force=True))
    if user is not None:
        steps.append(lambda: client.delete_account(user))
    for step in steps:
        try:
            step()
        except tgtd_mgmt.TgtdError as err:
            LOG.error('Rolling back a failed export: %s', err)


# -- entry points ---------------------------------------------------------

@privileged.tgt_pctxt.entrypoint
def show(port: int) -> str:
    """The text of ``tgtadm --lld iscsi --mode target --op show``."""
    return _client(check_port(port)).show_targets()


@privileged.tgt_pctxt.entrypoint
def export_target(port: int, iqn: str, path: str, chap_user: str,
                  chap_secret: str, initiators, bsoflags: str,
                  write_cache: bool, serial: str,
                  readonly: bool = False) -> int:
    """Export ``path`` as LUN 1 of a new target ``iqn``; returns its tid.

    Order: target, LUN (checked against tgtd's open files), LUN params,
    CHAP account, account binding, and only then the ACL. Any failure
    removes what this call created. ``readonly`` serves the LUN
    read-only (tgtd then fails every write). An existing target of that
    name that already serves ``path`` with this user, serial, bsoflags
    and read-only setting is
    accepted as is (its ACL is set to ``initiators``; a live target's
    secret is never changed, tgtd cannot show it); any other existing
    target of that name raises TargetRefused.
    """
    client = _client(check_port(port))
    check_iqn(iqn)
    check_path(path)
    check_chap(chap_user, chap_secret)
    initiators = check_initiators(initiators)
    check_bsoflags(bsoflags)
    check_flag(write_cache, _('write_cache'))
    check_serial(serial)
    check_flag(readonly, _('readonly'))

    targets = client.targets()
    existing = _ours(targets, iqn)
    if existing is not None:
        if not _same_export(existing, path, chap_user, bsoflags, serial,
                            readonly):
            raise TargetRefused(reason=_('target %s exists with other '
                                         'settings') % iqn)
        _sync_acl(client, existing, initiators)
        return existing.tid

    pid = _tgtd_pid(client)
    tid = _new_target(client, iqn, targets)
    account = None
    try:
        _add_lun(client, pid, tid, path, bsoflags, write_cache, serial,
                 readonly)
        _new_account(client, chap_user, chap_secret)
        account = chap_user
        client.bind_account(tid, chap_user)
        _sync_acl(client, tgtd_mgmt.Target(tid=tid, name=iqn,
                                           accounts=[chap_user]),
                  initiators)
    except Exception:
        _rollback(client, tid, account)
        raise
    LOG.info('Exported %(path)s as LUN %(lun)d of target %(iqn)s (tid '
             '%(tid)d).', {'path': path, 'lun': LUN, 'iqn': iqn, 'tid': tid})
    return tid


@privileged.tgt_pctxt.entrypoint
def delete_target(port: int, iqn: str) -> None:
    """Force-delete the target and the accounts only it used.

    A missing target is success.
    """
    client = _client(check_port(port))
    check_iqn(iqn)
    targets = client.targets()
    target = _ours(targets, iqn)
    if target is None:
        return
    try:
        client.delete_target(target.tid, force=True)
    except tgtd_mgmt.TgtdError as err:
        if err.code != tgtd_mgmt.NO_TARGET:
            raise
    in_use = {user for other in targets.values() if other.name != iqn
              for user in other.accounts}
    for user in sorted(set(target.accounts) - in_use):
        try:
            client.delete_account(user)
        except tgtd_mgmt.TgtdError as err:
            if err.code != tgtd_mgmt.NO_USER:
                raise
    LOG.info('Deleted target %(iqn)s (tid %(tid)d).',
             {'iqn': iqn, 'tid': target.tid})


@privileged.tgt_pctxt.entrypoint
def set_acl(port: int, iqn: str, initiators) -> None:
    """Make the live ACL exactly ``initiators`` (ALL when empty)."""
    client = _client(check_port(port))
    check_iqn(iqn)
    initiators = check_initiators(initiators)
    target = _ours(client.targets(), iqn)
    if target is None:
        raise TargetRefused(reason=_('target %s does not exist') % iqn)
    _sync_acl(client, target, initiators)


@privileged.tgt_pctxt.entrypoint
def reopen_lun(port: int, iqn: str, path: str, bsoflags: str,
               write_cache: bool, serial: str, readonly: bool = False) -> None:
    """Delete and re-add LUN 1; sessions and the ACL stay.

    tgtd refuses to delete a LUN with commands in flight; they drain
    fast, so that is retried briefly. If the new LUN fails the open-file
    check it is removed again and the target stays without LUN 1.
    """
    client = _client(check_port(port))
    check_iqn(iqn)
    check_path(path)
    check_bsoflags(bsoflags)
    check_flag(write_cache, _('write_cache'))
    check_serial(serial)
    check_flag(readonly, _('readonly'))
    target = _ours(client.targets(), iqn)
    if target is None:
        raise TargetRefused(reason=_('target %s does not exist') % iqn)
    pid = _tgtd_pid(client)
    if LUN in target.luns:
        for attempt in range(1, LUN_BUSY_ATTEMPTS + 1):
            try:
                client.delete_lun(target.tid, LUN)
                break
            except tgtd_mgmt.TgtdError as err:
                if (err.code != tgtd_mgmt.LUN_ACTIVE
                        or attempt == LUN_BUSY_ATTEMPTS):
                    raise
                time.sleep(0.2 * attempt)
    _add_lun(client, pid, target.tid, path, bsoflags, write_cache, serial,
             readonly)
    LOG.info('Re-opened LUN %(lun)d of target %(iqn)s on %(path)s.',
             {'lun': LUN, 'iqn': iqn, 'path': path})


@privileged.tgt_pctxt.entrypoint
def delete_account(port: int, user: str) -> None:
    """Delete a CHAP account no target uses; a missing one is success."""
    client = _client(check_port(port))
    _check_str(user, _('The CHAP user'), _CHAP_RE, 255)
    users = [t.name for t in client.targets().values() if user in t.accounts]
    if users:
        raise TargetRefused(reason=_('CHAP user %(user)s is in use by '
                                     '%(targets)s')
                            % {'user': user, 'targets': ', '.join(users)})
    try:
        client.delete_account(user)
    except tgtd_mgmt.TgtdError as err:
        if err.code != tgtd_mgmt.NO_USER:
            raise
