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

import os
import re
import time
from typing import (Any, Callable, Iterable, Optional, Sequence, TypeGuard,
                    TypeVar)

from oslo_log import log as logging

from cinder import exception
from cinder.i18n import _

from fuse_cinder import mount_table
from fuse_cinder import privileged
from fuse_cinder.privileged import tgt_view
from fuse_cinder.targets import tgtd_mgmt

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
#: iSCSI login keys a target may be given (tgtd's ``--op update --mode
#: target``), with the values accepted: RFC 7143 ranges for the lengths,
#: Yes/No for the booleans. tgtd offers them to every new session.
#: MaxOutstandingR2T, digests and the rest stay tgtd's defaults.
_LENGTH = (512, 16777215)
SESSION_PARAMS = {
    'MaxRecvDataSegmentLength': _LENGTH,
    'FirstBurstLength': _LENGTH,
    'MaxBurstLength': _LENGTH,
    'ImmediateData': ('Yes', 'No'),
    'InitialR2T': ('Yes', 'No'),
}
MAX_INITIATORS = 64
#: Tries for a free tid before giving up (each lost race costs one).
TID_ATTEMPTS = 64
#: Free descriptor numbers of tgtd a new LUN's file is looked for on
#: (the lowest ones, and as many past the highest open one).
FD_CANDIDATES = 4
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
_T = TypeVar('_T')


class TargetRefused(exception.CinderException):
    """The helper will not act on this target or file."""

    message = _('tgt request refused: %(reason)s')


class TargetConflict(TargetRefused):
    """A target of that name exists with other settings."""


class TargetMissing(TargetRefused):
    """tgtd has no target of that name."""


# -- validation -----------------------------------------------------------

def _invalid(what: str, why: str) -> exception.InvalidInput:
    return exception.InvalidInput(reason=_('%(what)s %(why)s')
                                  % {'what': what, 'why': why})


def _check_str(value: object, what: str, pattern: re.Pattern[str],
               max_len: int) -> str:
    if type(value) is not str:
        raise _invalid(what, _('must be a string'))
    if len(value) > max_len or not pattern.fullmatch(value):
        raise _invalid(what, _('has an unsupported form'))
    return value


def check_port(port: object) -> int:
    if type(port) is not int or not 0 <= port <= 65535:
        raise _invalid(_('The tgtd control port'),
                       _('must be an int from 0 to 65535'))
    return port


def check_iqn(iqn: object) -> str:
    """``<prefix>:volume-<uuid>`` with a strict iqn./eui./naa. prefix."""
    return _check_str(iqn, _('The target name'), _TARGET_RE, _MAX_NAME)


def check_initiators(initiators: object) -> tuple[str, ...]:
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


def check_chap(user: object, secret: object) -> None:
    _check_str(user, _('The CHAP user'), _CHAP_RE, 255)
    if type(secret) is not str or not _CHAP_RE.fullmatch(secret):
        # Never echo the secret, not even its length.
        raise _invalid(_('The CHAP secret'), _('has an unsupported form'))


def check_bsoflags(bsoflags: object) -> str:
    if type(bsoflags) is not str or bsoflags not in BSOFLAGS:
        raise _invalid(_('bsoflags'), _('must be one of %s') % (BSOFLAGS,))
    return bsoflags


def check_session_params(params: object) -> dict[str, int | str]:
    """{key: value} of SESSION_PARAMS keys, each value in its range.

    FirstBurstLength may not exceed MaxBurstLength (RFC 7143 13.14); a
    key left out keeps tgtd's default, so the check takes tgtd's 262144
    for a MaxBurstLength not given.
    """
    if type(params) is not dict:
        raise _invalid(_('The session parameters'), _('must be a dict'))
    for key, value in params.items():
        allowed = SESSION_PARAMS.get(key) if type(key) is str else None
        if allowed is None:
            raise _invalid(_('The session parameters'),
                           _('name an unsupported key'))
        low, high = allowed[0], allowed[-1]
        if type(low) is int and type(high) is int:
            ok = type(value) is int and low <= value <= high
        else:
            ok = type(value) is str and value in allowed
        if not ok:
            raise _invalid(_('The session parameter %s') % key,
                           _('must be in %s') % (allowed,))
    first = params.get('FirstBurstLength', 0)
    if first > params.get('MaxBurstLength', 262144):
        raise _invalid(_('FirstBurstLength'),
                       _('may not exceed MaxBurstLength'))
    return params


def check_serial(serial: object) -> str:
    return _check_str(serial, _('The serial'), _SERIAL_RE, 32)


def check_flag(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise _invalid(what, _('must be a bool'))
    return value


def is_volume_path(path: object) -> TypeGuard[str]:
    """Absolute, normalised, no ``..``, ending in ``volume-<uuid>``."""
    return (type(path) is str and len(path) <= _MAX_PATH
            and bool(_PATH_RE.fullmatch(path))
            and os.path.normpath(path) == path
            and not {'.', '..'} & set(path.split('/')))


def read_mountinfo(filename: str = MOUNTINFO) -> list[mount_table.MountId]:
    """[MountId] of a mountinfo file; procfs never blocks."""
    with open(filename) as f:
        return mount_table.parse_mountinfo(f.read())


def check_path(path: object, mountinfo: str = MOUNTINFO) -> str:
    """A volume file name whose mount (by name) is a FUSE filesystem.

    The mount holding the path itself counts, so a file bind-mounted over
    a volume name is refused too.
    """
    if not is_volume_path(path):
        raise _invalid(_('The backing file'),
                       _('must be an absolute normalised path ending in '
                         'volume-<uuid>'))
    found = mount_table.find_mount(path, read_mountinfo(mountinfo))
    if found is None or not mount_table.is_fuse_type(found.fs_type):
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


def _ours(target: Optional[tgtd_mgmt.Target],
          iqn: str) -> Optional[tgtd_mgmt.Target]:
    if target is not None and not is_ours(target):
        raise TargetRefused(reason=_('target %s is not a fuse_cinder '
                                     'volume target') % iqn)
    return target


def _view(client: tgtd_mgmt.TgtdClient) -> tuple[tgt_view.TgtdView, int]:
    """(this daemon's view of tgtd, tgtd's pid); the view of *this* tgtd."""
    pid = _tgtd_pid(client)
    view = tgt_view.for_port(client.control_port)
    view.check_pid(pid)
    return view, pid


def _lun_params(serial: str, write_cache: bool, readonly: bool) -> str:
    params = 'scsi_id=%s,scsi_sn=%s' % (serial, serial)
    if not write_cache:
        params += ',mode_page=' + WRITE_CACHE_OFF_MODE_PAGE
    if readonly:
        params += ',readonly=1'
    return params


def _fd_dir(pid: int) -> str:
    return '/proc/%d/fd' % pid


def _fd_numbers(pid: int) -> set[int]:
    """tgtd's open descriptors: no readlink, but it grows with each LUN."""
    return {int(fd) for fd in os.listdir(_fd_dir(pid))}


def _fd_links(pid: int, numbers: Iterable[int]) -> set[tuple[int, str]]:
    """{(fd, what it names)} (readlink needs CAP_SYS_PTRACE)."""
    found = set()
    for fd in numbers:
        try:
            found.add((fd, os.readlink(os.path.join(_fd_dir(pid), str(fd)))))
        except OSError:
            pass  # closed meanwhile
    return found


def _on_fuse(pid: int, fds: list[int]) -> bool:
    """There are such descriptors of tgtd, and all lie on FUSE.

    readlink of /proc/<pid>/fd names the file actually opened, so a
    ``volume-<uuid>`` symlink shows as its target and fails here; the
    mount is looked up in tgtd's own mount namespace.
    """
    if not fds:
        return False
    try:
        return all(mount_table.is_fuse_type(
            mount_table.fd_fs_type(fd, pid) or '') for fd in fds)
    except OSError:
        return False


class _OpenCheck(object):
    """Proves that a request made tgtd open ``path`` itself, on FUSE.

    Only new descriptors count: a (number, name) pair tgtd did not have
    before the request. The quick form compares just the few numbers the
    view's hint expects the file on (the lowest free ones), so it costs
    the same beside any number of LUNs; it misses the file when something
    else took those numbers meanwhile, and then the caller tries again
    with a hint from a fresh listing, and last with the full form, which
    compares every pair.
    """

    def __init__(self, pid: int, path: str, view: tgt_view.TgtdView,
                 full: bool) -> None:
        self.pid, self.path = pid, path
        self.numbers: Optional[list[int]] = None    # None: every one
        if not full:
            self.numbers = view.free_fds(FD_CANDIDATES)
            if self.numbers is None:
                view.learn_fds(_fd_numbers(pid))
                self.numbers = view.free_fds(FD_CANDIDATES) or []
        self.before = self._links()

    def _links(self) -> set[tuple[int, str]]:
        return _fd_links(self.pid, _fd_numbers(self.pid)
                         if self.numbers is None else self.numbers)

    def opened(self) -> Optional[int]:
        """The new descriptor of ``path`` on FUSE; None if not proven."""
        fds = sorted(fd for fd, link in self._links() - self.before
                     if link == self.path)
        return fds[0] if _on_fuse(self.pid, fds) else None


def _new_target(client: tgtd_mgmt.TgtdClient, view: tgt_view.TgtdView,
                iqn: str) -> int | tgtd_mgmt.Target:
    """Create the target on a free tid, or find it already there.

    Returns the tid of a new target, or the existing target of that
    name. tgtd answers "target exists" for a taken tid and for a taken
    name alike; a listing tells which, so two processes never share a
    tid and a name is never made twice.
    """
    for _attempt in range(TID_ATTEMPTS):
        tid = view.claim_tid()
        try:
            client.new_target(tid, iqn)
            return tid
        except tgtd_mgmt.TgtdError as err:
            view.release_tid(tid)
            if err.code != tgtd_mgmt.TARGET_EXIST:
                raise
        view.refresh(client)
        existing = _ours(view.get(iqn), iqn)
        if existing is not None:
            return existing
    raise TargetRefused(reason=_('no free tid after %d attempts')
                        % TID_ATTEMPTS)


def _new_account(client: tgtd_mgmt.TgtdClient, view: tgt_view.TgtdView,
                 user: str, secret: str, iqn: str) -> None:
    """Create the account, replacing a leftover one of that user.

    tgtd unbinds a deleted account from every target, which would leave
    a target without CHAP; an account some target uses is never replaced
    (tgtd's listing says which do). So no two targets ever share one.
    """
    try:
        client.new_account(user, secret)
        return
    except tgtd_mgmt.TgtdError as err:
        if err.code != tgtd_mgmt.USER_EXIST:
            raise
    view.refresh(client)
    users = view.users_elsewhere(user, iqn)
    if users:
        raise TargetRefused(reason=_('CHAP user %(user)s is in use by '
                                     '%(targets)s')
                            % {'user': user, 'targets': ', '.join(users)})
    LOG.info('Replacing the unused tgtd account %s.', user)
    client.delete_account(user)
    client.new_account(user, secret)


def _sync_acl(client: tgtd_mgmt.TgtdClient, view: tgt_view.TgtdView,
              target: tgtd_mgmt.Target, initiators: Sequence[str]) -> None:
    """Make the ACL exactly the initiators (plus NO_ADDRESS), or ALL.

    New entries are bound before old ones go, so an initiator that stays
    allowed is never locked out meanwhile. tgtd answers "exists" for an
    entry it has already; that is what was wanted.
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
    steps = ([(client.bind_initiator_name, n)
              for n in sorted(want_names - have_names)]
             + [(client.bind_initiator_address, a)
                for a in sorted(want_addrs - have_addrs)]
             + [(client.unbind_initiator_address, a)
                for a in sorted(have_addrs - want_addrs)]
             + [(client.unbind_initiator_name, n)
                for n in sorted(have_names - want_names)])
    for step, entry in steps:
        try:
            step(tid, entry)
        except tgtd_mgmt.TgtdError as err:
            if err.code not in (tgtd_mgmt.ACL_EXIST, tgtd_mgmt.ACL_NOEXIST):
                raise
    if steps:
        target.acl = sorted(want_addrs) + sorted(want_names)
        view.put(target)


def _open_lun(client: tgtd_mgmt.TgtdClient, pid: int,
              view: tgt_view.TgtdView, tid: int, path: str,
              bsoflags: str) -> int:
    """LUN 1 on ``path``; the descriptor tgtd proved to open it on."""
    for full in (False, False, True):
        check = _OpenCheck(pid, path, view, full)
        client.new_lun(tid, LUN, path, bstype='rdwr', bsoflags=bsoflags)
        fd = check.opened()
        if fd is not None:
            return fd
        client.delete_lun(tid, LUN)
        view.forget_fds()
        LOG.debug('Looking for the file tgtd opened for %s again.', path)
    raise TargetRefused(reason=_('tgtd did not open %s itself on a FUSE '
                                 'mount (a symbolic link?)') % path)


def _add_lun(client: tgtd_mgmt.TgtdClient, pid: int, view: tgt_view.TgtdView,
             target: tgtd_mgmt.Target, path: str, bsoflags: str,
             write_cache: bool, serial: str, readonly: bool) -> None:
    """LUN 1 on ``path``, proven to be that very file, with its params."""
    view.lun_opened(target.name, _open_lun(client, pid, view, target.tid,
                                           path, bsoflags))
    try:
        client.update_lun(target.tid, LUN,
                          _lun_params(serial, write_cache, readonly))
    except Exception:
        client.delete_lun(target.tid, LUN)
        view.lun_closed(target.name)
        raise
    target.luns[LUN] = tgtd_mgmt.Lun(path=path, scsi_id=serial,
                                     scsi_sn=serial, bsoflags=bsoflags,
                                     readonly=readonly)
    view.put(target)


def _tgtd_pid(client: tgtd_mgmt.TgtdClient) -> int:
    pid, uid, gid = client.peer()
    if uid or gid:
        raise TargetRefused(reason=_('the tgtd socket is not served by '
                                     'root'))
    return pid


def _drop_account(client: tgtd_mgmt.TgtdClient, view: tgt_view.TgtdView,
                  user: str, iqn: str, known: bool) -> None:
    """Delete ``user`` unless another target uses it.

    A ``known`` user is one tgtd showed bound to the target ``iqn`` (or
    this daemon bound there): no other target of ours shares it
    (_new_account), so the daemon's memory answers. Any other name lists
    tgtd first, so that no caller can strip CHAP from a target it does
    not know.
    """
    if not known:
        view.refresh(client)
    users = view.users_elsewhere(user, iqn)
    if users:
        LOG.debug('Keeping tgtd account %(user)s, used by %(targets)s.',
                  {'user': user, 'targets': ', '.join(users)})
        return
    try:
        client.delete_account(user)
    except tgtd_mgmt.TgtdError as err:
        if err.code != tgtd_mgmt.NO_USER:
            raise


def _rollback(client: tgtd_mgmt.TgtdClient, view: tgt_view.TgtdView,
              tid: int, iqn: str, user: Optional[str]) -> None:
    """Undo a failed export; errors here must not hide the first one."""
    steps = [lambda: client.delete_target(tid, force=True)]
    if user is not None:
        steps.append(lambda: client.delete_account(user))
    for step in steps:
        try:
            step()
        except tgtd_mgmt.TgtdError as err:
            LOG.error('Rolling back a failed export: %s', err)
    view.forget(iqn)


def _retry_gone(func: Callable[[bool], _T]) -> _T:
    """Run ``func(view)``; once more after a listing if tgtd lost a target.

    A remembered tid that tgtd no longer has ("can't find the target")
    means someone else removed it: the memory is refreshed and the
    request made again on what tgtd really has.
    """
    try:
        return func(False)
    except tgtd_mgmt.TgtdError as err:
        if err.code != tgtd_mgmt.NO_TARGET:
            raise
    return func(True)


def _on_target(client: tgtd_mgmt.TgtdClient, view: tgt_view.TgtdView, iqn: str,
               action: Callable[[tgtd_mgmt.Target], _T]) -> _T:
    """``action(target)`` on our target ``iqn``; TargetMissing without."""
    def attempt(refreshed: bool) -> _T:
        if refreshed:
            view.forget(iqn)
        target = _ours(view.find(client, iqn), iqn)
        if target is None:
            raise TargetMissing(reason=_('target %s does not exist') % iqn)
        return action(target)

    return _retry_gone(attempt)


def _state(target: tgtd_mgmt.Target) -> dict[str, Any]:
    lun = target.luns.get(LUN) or tgtd_mgmt.Lun()
    return {'tid': target.tid, 'iqn': target.name, 'path': lun.path,
            'serial': lun.scsi_sn, 'bsoflags': lun.bsoflags,
            'readonly': lun.readonly,
            'accounts': list(target.accounts), 'acl': list(target.acl)}


# -- entry points ---------------------------------------------------------

@privileged.tgt_pctxt.entrypoint
def show(port: int) -> str:
    """The text of ``tgtadm --lld iscsi --mode target --op show``.

    The daemon remembers what it lists (see tgt_view).
    """
    client = _client(check_port(port))
    view, _pid = _view(client)
    return view.refresh(client)


@privileged.tgt_pctxt.entrypoint
def describe(port: int, iqn: str) -> Optional[dict[str, Any]]:
    """One of our targets as tgtd has it (no listing when remembered)."""
    client = _client(check_port(port))
    check_iqn(iqn)
    view, _pid = _view(client)
    target = _ours(view.find(client, iqn), iqn)
    return _state(target) if target is not None else None


@privileged.tgt_pctxt.entrypoint
def export_target(port: int, iqn: str, path: str, chap_user: str,
                  chap_secret: str, initiators: Sequence[str],
                  bsoflags: str, write_cache: bool, serial: str,
                  readonly: bool = False,
                  session_params: Optional[dict[str, int | str]] = None
                  ) -> int:
    """Export ``path`` as LUN 1 of a new target ``iqn``; returns its tid.

    Order: target, its ``session_params`` (iSCSI login keys, see
    SESSION_PARAMS; they apply to sessions that log in later, so they
    are set before any initiator is admitted), LUN (checked against
    tgtd's open files), LUN params, CHAP account, account binding, and
    only then the ACL. Any failure
    removes what this call created. ``readonly`` serves the LUN
    read-only (tgtd then fails every write). An existing target of that
    name that already serves ``path`` with this user, serial, bsoflags
    and read-only setting is accepted as is (its ACL is set to
    ``initiators``; a live target's secret is never changed, tgtd cannot
    show it); any other existing target of that name raises
    TargetConflict. A new target costs no listing: tgtd refuses a taken
    tid or name, and only then is it listed. An existing target keeps
    the session parameters it has (tgtd does not show them).
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
    session_params = check_session_params(
        {} if session_params is None else session_params)
    view, pid = _view(client)

    def existing(target: tgtd_mgmt.Target) -> int:
        if not target.serves(LUN, path, chap_user, bsoflags, serial,
                             readonly):
            raise TargetConflict(reason=_('target %s exists with other '
                                          'settings') % iqn)
        _sync_acl(client, view, target, initiators)
        return target.tid

    def known(refreshed: bool) -> Optional[int]:
        if refreshed:
            view.forget(iqn)
            return None
        target = _ours(view.get(iqn), iqn)
        return existing(target) if target is not None else None

    tid = _retry_gone(known)
    if tid is not None:
        return tid
    made = _new_target(client, view, iqn)
    if isinstance(made, tgtd_mgmt.Target):
        return existing(made)
    tid = made
    account = None
    target = tgtd_mgmt.Target(tid=tid, name=iqn)
    view.put(target)
    try:
        for key in sorted(session_params):
            client.update_target(tid, key, session_params[key])
        _add_lun(client, pid, view, target, path, bsoflags, write_cache,
                 serial, readonly)
        _new_account(client, view, chap_user, chap_secret, iqn)
        account = chap_user
        client.bind_account(tid, chap_user)
        target.accounts = [chap_user]
        view.put(target)
        _sync_acl(client, view, target, initiators)
    except Exception:
        _rollback(client, view, tid, iqn, account)
        raise
    LOG.info('Exported %(path)s as LUN %(lun)d of target %(iqn)s (tid '
             '%(tid)d).', {'path': path, 'lun': LUN, 'iqn': iqn, 'tid': tid})
    return tid


@privileged.tgt_pctxt.entrypoint
def delete_target(port: int, iqn: str,
                  chap_user: Optional[str] = None) -> None:
    """Force-delete the target and the accounts only it used.

    ``chap_user`` (the export's recorded account) goes too unless another
    target uses it: tgtd may hold it without the target (a half-made
    export of a crashed daemon), and a secret must not outlive its
    export. A missing target is success.
    """
    client = _client(check_port(port))
    check_iqn(iqn)
    if chap_user is not None:
        _check_str(chap_user, _('The CHAP user'), _CHAP_RE, 255)
    view, _pid = _view(client)
    target = _ours(view.find(client, iqn), iqn)
    users = set() if chap_user is None else {chap_user}
    known: set[str] = set()
    if target is not None:
        try:
            client.delete_target(target.tid, force=True)
        except tgtd_mgmt.TgtdError as err:
            if err.code != tgtd_mgmt.NO_TARGET:
                raise
        view.forget(iqn)
        known = set(target.accounts)
        LOG.info('Deleted target %(iqn)s (tid %(tid)d).',
                 {'iqn': iqn, 'tid': target.tid})
    for user in sorted(users | known):
        _drop_account(client, view, user, iqn, user in known)


@privileged.tgt_pctxt.entrypoint
def set_acl(port: int, iqn: str, initiators: Sequence[str]) -> None:
    """Make the live ACL exactly ``initiators`` (ALL when empty)."""
    client = _client(check_port(port))
    check_iqn(iqn)
    initiators = check_initiators(initiators)
    view, _pid = _view(client)
    _on_target(client, view, iqn,
               lambda target: _sync_acl(client, view, target, initiators))


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
    view, pid = _view(client)

    def reopen(target: tgtd_mgmt.Target) -> None:
        _delete_lun(client, view, target)
        _add_lun(client, pid, view, target, path, bsoflags, write_cache,
                 serial, readonly)

    _on_target(client, view, iqn, reopen)
    LOG.info('Re-opened LUN %(lun)d of target %(iqn)s on %(path)s.',
             {'lun': LUN, 'iqn': iqn, 'path': path})


def _delete_lun(client: tgtd_mgmt.TgtdClient, view: tgt_view.TgtdView,
                target: tgtd_mgmt.Target) -> None:
    """Delete LUN 1, waiting briefly for commands in flight; gone is fine."""
    for attempt in range(1, LUN_BUSY_ATTEMPTS + 1):
        try:
            client.delete_lun(target.tid, LUN)
            break
        except tgtd_mgmt.TgtdError as err:
            if err.code == tgtd_mgmt.NO_LUN:
                break
            if (err.code != tgtd_mgmt.LUN_ACTIVE
                    or attempt == LUN_BUSY_ATTEMPTS):
                raise
            time.sleep(0.2 * attempt)
    target.luns.pop(LUN, None)
    view.lun_closed(target.name)
    view.put(target)
