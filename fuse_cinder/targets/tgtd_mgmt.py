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
"""A client of tgtd's management socket: what tgtadm says, without tgtadm.

One request is one connection to ``/var/run/tgtd/socket.<control port>``
(an AF_UNIX stream socket, not abstract): a fixed 120-byte header
(``struct tgtadm_req`` of tgt 1.0.85, ``usr/tgtadm.h``), then the
parameters as one NUL-terminated ``key=value,key=value`` string; tgtd
answers ``struct tgtadm_rsp`` (error code, total length) and, for
``show``, the text tgtadm prints. Layout and error texts were checked
byte for byte against the installed tgtadm 1.0.85 (strace of its writes,
and a fake socket answering every error code to it).

Every socket operation has a deadline: tgtd is single threaded and stops
answering while a FUSE daemon under one of its LUNs hangs.

Who may talk to tgtd: on accept it reads SO_PEERCRED and closes the
connection unless the peer's uid *and* gid are 0 (``ipc_perm`` in
``usr/mgmt.c``), for every request, ``show`` included. No capability is
looked at; the socket file is ``srwxr-xr-x root``, so connecting needs
write permission on it, which uid 0 has as its owner. A refused peer sees
the connection closed without an answer (TgtdUnavailable).

Parameter strings are split by tgtd on ``,`` and ``=`` with no escaping,
so values carrying either (or NUL) are refused here rather than misread
there.
"""

import dataclasses
import socket
import struct
import time
from typing import Any, Iterable, Optional, Union

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

#: Directory and name of tgtd's socket, ``TGT_IPC_NAMESPACE.<port>``.
SOCKET_PATH = '/var/run/tgtd/socket.%d'
#: Seconds one request may take, connect to last byte.
DEFAULT_TIMEOUT = 10.0
#: tgtd closes the connection on parameter strings above 8 KiB.
MAX_PARAMS = 8 * 1024

# enum tgtadm_mode / tgtadm_op (usr/tgtadm.h)
MODE_SYSTEM, MODE_TARGET, MODE_DEVICE, MODE_PORTAL, MODE_LLD = range(5)
MODE_SESSION, MODE_CONNECTION, MODE_ACCOUNT = range(5, 8)
OP_NEW, OP_DELETE, OP_SHOW, OP_BIND, OP_UNBIND, OP_UPDATE = range(6)

# enum tgtadm_errno as tgt 1.0.85 numbers it, with tgtadm's message texts.
SUCCESS = 0
NO_TARGET = 4
NO_LUN = 5
TARGET_EXIST = 9
LUN_EXIST = 10
ACL_EXIST = 12
ACL_NOEXIST = 13
USER_EXIST = 14
NO_USER = 15
TARGET_ACTIVE = 19
LUN_ACTIVE = 20
MESSAGES = (
    'success',
    'unknown error',
    'out of memory',
    "can't find the driver",
    "can't find the target",
    "can't find the logical unit",
    "can't find the session",
    "can't find the connection",
    "can't find the binding",
    'this target already exists',
    'this logical unit number already exists',
    'this binding already exists',
    'this access control rule already exists',
    'this access control rule does not exist',
    'this account already exists',
    "can't find the account",
    'too many accounts',
    'invalid request',
    'this target already has an outgoing account',
    'this target is still active',
    'this logical unit is still active',
    'this driver is busy',
    "this operation isn't supported",
    'unknown parameter',
    'this device has Prevent Removal set',
)

#: struct tgtadm_req: mode, op, lld[64], len, tid, sid, lun, cid, host_no,
#: device_type, ac_dir, pack, force. Natural alignment adds no padding.
REQUEST = struct.Struct('=II64sIiQQIIIIII')
#: struct tgtadm_rsp: err, len (len counts this header too).
RESPONSE = struct.Struct('=II')
NO_LUN_GIVEN = 2 ** 64 - 1
TYPE_DISK = 0
ACCOUNT_INCOMING = 0
_UCRED = struct.Struct('=iII')

_OPS = {OP_NEW: 'new', OP_DELETE: 'delete', OP_SHOW: 'show',
        OP_BIND: 'bind', OP_UNBIND: 'unbind', OP_UPDATE: 'update'}
_MODES = {MODE_SYSTEM: 'system', MODE_TARGET: 'target',
          MODE_DEVICE: 'logicalunit', MODE_ACCOUNT: 'account'}


class TgtdError(Exception):
    """tgtd refused a request; ``code`` is its tgtadm_errno.

    Constructed from ``(message, code)`` only, so that oslo.privsep can
    rebuild it on the caller's side. The message never holds parameters.
    """

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message, code)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class TgtdUnavailable(TgtdError):
    """No answer: tgtd not running, refused us, or broke the protocol."""


class TgtdTimeout(TgtdUnavailable):
    """tgtd did not answer in time (hung, e.g. on a FUSE mount)."""


def message_for(code: int) -> str:
    """tgtadm's text for an error code (tgtadm_strerror)."""
    if 0 <= code < len(MESSAGES):
        return MESSAGES[code]
    return '(unknown tgtadm_errno)'


def encode_params(pairs: Iterable[tuple[str, object]]) -> bytes:
    """``k=v,k=v`` NUL-terminated; refuses what tgtd would misread."""
    parts = []
    for key, value in pairs:
        value = str(value)
        if ',' in value or '\0' in value:
            raise ValueError('a tgtd parameter value may not contain "," '
                             'or NUL (parameter %s)' % key)
        parts.append('%s=%s' % (key, value))
    return _terminate(','.join(parts))


def _terminate(text: str) -> bytes:
    if '\0' in text:
        raise ValueError('tgtd parameters may not contain NUL')
    data = text.encode('ascii') + b'\0'
    if len(data) > MAX_PARAMS:
        raise ValueError('tgtd parameters over %d bytes' % MAX_PARAMS)
    return data


def encode_request(mode: int, op: int, params: bytes = b'', tid: int = -1,
                   lun: int = NO_LUN_GIVEN, force: bool = False,
                   lld: str = 'iscsi') -> bytes:
    """Header plus parameters, exactly as tgtadm writes them."""
    header = REQUEST.pack(mode, op, lld.encode('ascii'),
                          REQUEST.size + len(params), tid, 0, lun, 0, 0,
                          TYPE_DISK, ACCOUNT_INCOMING, 0, int(force))
    return header + params


def decode_response(header: bytes) -> tuple[int, int]:
    """(error code, length of the text that follows)."""
    err, length = RESPONSE.unpack(header)
    if length < RESPONSE.size:
        raise TgtdUnavailable('tgtd sent a malformed response length %d'
                              % length)
    return err, length - RESPONSE.size


@dataclasses.dataclass
class Lun:
    path: Optional[str] = None
    scsi_id: str = ''
    scsi_sn: str = ''
    bsoflags: str = ''
    readonly: bool = False


@dataclasses.dataclass
class Target:
    """One target of ``show``, as the checks on both sides compare it."""

    tid: int
    name: str
    luns: dict[int, Lun] = dataclasses.field(default_factory=dict)
    accounts: list[str] = dataclasses.field(default_factory=list)
    acl: list[str] = dataclasses.field(default_factory=list)
    nexus: bool = False

    def serves(self, lun: int, path: str, chap_user: str, bsoflags: str,
               serial: str, readonly: bool) -> bool:
        """Is LUN ``lun`` already this export, with only this account?

        The order of the open flags does not matter to tgtd.
        """
        found = self.luns.get(lun)
        return (found is not None and found.path == path
                and self.accounts == [chap_user] and found.scsi_sn == serial
                and set(found.bsoflags.split(':')) == set(bsoflags.split(':'))
                and found.readonly == readonly)


_LUN_FIELDS = {'Backing store path': 'path', 'SCSI ID': 'scsi_id',
               'SCSI SN': 'scsi_sn', 'Backing store flags': 'bsoflags',
               'Readonly': 'readonly'}


def parse_targets(text: str) -> dict[str, Target]:
    """{name: Target} from the text of a target ``show``."""
    targets: dict[str, Target] = {}
    target: Optional[Target] = None
    section: Optional[str] = None
    lun: Optional[Lun] = None
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith('Target ') and ': ' in raw:
            head, _sep, name = raw.partition(': ')
            target = Target(tid=int(head.split()[1]), name=name.strip())
            targets[target.name] = target
            section = lun = None
        elif target is None or not line:
            continue
        elif raw.startswith('    ') and not raw.startswith('     ') \
                and line.endswith(':'):
            section = line[:-1]
        elif section == 'I_T nexus information':
            target.nexus = True
        elif section == 'LUN information':
            key, _sep, value = line.partition(':')
            value = value.strip()
            if key == 'LUN':
                lun = target.luns.setdefault(int(value), Lun())
            elif lun is not None and key in _LUN_FIELDS:
                setattr(lun, _LUN_FIELDS[key], _lun_value(key, value))
        elif section == 'Account information':
            target.accounts.append(line.split()[0])
        elif section == 'ACL information':
            target.acl.append(line)
    return targets


def _lun_value(key: str, value: str) -> Union[str, bool, None]:
    if key == 'Readonly':
        return value == 'Yes'
    if key == 'Backing store path' and value == 'None':
        return None
    return value


def parse_accounts(text: str) -> list[str]:
    """User names from the text of an account ``show``."""
    return [line.strip() for line in text.splitlines()[1:] if line.strip()]


class TgtdClient:
    """Requests to one tgtd, one connection each, each within a deadline.

    ``address`` overrides the socket (a str path, or bytes starting with
    NUL for an abstract socket, as the tests' fake tgtd uses).
    """

    def __init__(self, control_port: int = 0,
                 timeout: float = DEFAULT_TIMEOUT,
                 address: Optional[str | bytes] = None) -> None:
        self.control_port = control_port
        self.timeout = timeout
        self.address = address or SOCKET_PATH % control_port

    # -- transport ---------------------------------------------------------

    def _connect(self, deadline: float) -> socket.socket:
        """Connect, waiting out a full listen backlog (tgtd's is 32).

        A socket with a timeout is non-blocking underneath, and an AF_UNIX
        connect then fails with EAGAIN instead of queueing.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            while True:
                try:
                    sock.settimeout(self._left(deadline))
                    sock.connect(self.address)
                    return sock
                except BlockingIOError:
                    time.sleep(0.005)
        except socket.timeout:
            sock.close()
            raise TgtdTimeout('tgtd on control port %d did not accept a '
                              'connection within %.1f s'
                              % (self.control_port, self.timeout))
        except OSError as err:
            sock.close()
            raise TgtdUnavailable('tgtd on control port %d is not reachable:'
                                  ' %s' % (self.control_port, err.strerror))

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        return left

    def _recv_exactly(self, sock: socket.socket, size: int,
                      deadline: float) -> bytes:
        chunks = []
        while size:
            sock.settimeout(self._left(deadline))
            chunk = sock.recv(min(size, 65536))
            if not chunk:
                raise TgtdUnavailable('tgtd on control port %d closed the '
                                      'connection without a full answer '
                                      '(are we root, uid and gid 0?)'
                                      % self.control_port)
            chunks.append(chunk)
            size -= len(chunk)
        return b''.join(chunks)

    def request(self, mode: int, op: int, params: bytes = b'',
                **fields: Any) -> str:
        """Send one request; the answer's text, or TgtdError."""
        what = '%s %s' % (_MODES.get(mode, mode), _OPS.get(op, op))
        data = encode_request(mode, op, params, **fields)
        deadline = time.monotonic() + self.timeout
        sock = self._connect(deadline)
        try:
            sock.settimeout(self._left(deadline))
            sock.sendall(data)
            err, length = decode_response(
                self._recv_exactly(sock, RESPONSE.size, deadline))
            text = self._recv_exactly(sock, length, deadline)
        except socket.timeout:
            raise TgtdTimeout('tgtd on control port %d did not answer %s '
                              'within %.1f s' % (self.control_port, what,
                                                 self.timeout))
        except OSError as exc:
            raise TgtdUnavailable('tgtd on control port %d failed %s: %s'
                                  % (self.control_port, what, exc.strerror))
        finally:
            sock.close()
        if err != SUCCESS:
            LOG.debug('tgtd refused %(what)s (tid %(tid)s): %(msg)s',
                      {'what': what, 'tid': fields.get('tid'),
                       'msg': message_for(err)})
            raise TgtdError('tgtd refused %s: %s' % (what, message_for(err)),
                            err)
        return text.rstrip(b'\0').decode('utf-8', 'replace')

    def peer(self) -> tuple[int, int, int]:
        """(pid, uid, gid) of the process serving the socket (SO_PEERCRED).

        No request is sent; tgtd just sees a connection close.
        """
        sock = self._connect(time.monotonic() + self.timeout)
        try:
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                   _UCRED.size)
        finally:
            sock.close()
        return _UCRED.unpack(cred)

    def peer_pid(self) -> int:
        return self.peer()[0]

    def _send(self, mode: int, op: int, *pairs: tuple[str, object],
              **fields: Any) -> str:
        return self.request(mode, op, encode_params(pairs) if pairs else b'',
                            **fields)

    # -- targets -----------------------------------------------------------

    def show_targets(self) -> str:
        """The text of ``tgtadm --lld iscsi --mode target --op show``."""
        return self._send(MODE_TARGET, OP_SHOW)

    def targets(self) -> dict[str, Target]:
        return parse_targets(self.show_targets())

    def new_target(self, tid: int, name: str) -> None:
        self._send(MODE_TARGET, OP_NEW, ('targetname', name), tid=tid)

    def delete_target(self, tid: int, force: bool = False) -> None:
        self._send(MODE_TARGET, OP_DELETE, tid=tid, force=force)

    def update_target(self, tid: int, name: str, value: int | str) -> None:
        """A target parameter, e.g. MaxRecvDataSegmentLength."""
        if '=' in name or ',' in name:
            raise ValueError('a parameter name may not contain "=" or ","')
        self._send(MODE_TARGET, OP_UPDATE, (name, value), tid=tid)

    def bind_initiator_name(self, tid: int, name: str) -> None:
        self._send(MODE_TARGET, OP_BIND, ('initiator-name', name), tid=tid)

    def unbind_initiator_name(self, tid: int, name: str) -> None:
        self._send(MODE_TARGET, OP_UNBIND, ('initiator-name', name),
                   tid=tid)

    def bind_initiator_address(self, tid: int, address: str) -> None:
        self._send(MODE_TARGET, OP_BIND, ('initiator-address', address),
                   tid=tid)

    def unbind_initiator_address(self, tid: int, address: str) -> None:
        self._send(MODE_TARGET, OP_UNBIND, ('initiator-address', address),
                   tid=tid)

    # -- logical units -----------------------------------------------------

    def new_lun(self, tid: int, lun: int, path: str, bstype: str = 'rdwr',
                bsoflags: str = '') -> None:
        pairs = [('path', path), ('bstype', bstype)]
        if bsoflags:
            pairs.append(('bsoflags', bsoflags))
        self._send(MODE_DEVICE, OP_NEW, *pairs, tid=tid, lun=lun)

    def delete_lun(self, tid: int, lun: int) -> None:
        self._send(MODE_DEVICE, OP_DELETE, tid=tid, lun=lun)

    def update_lun(self, tid: int, lun: int, params: str) -> None:
        """LUN parameters, e.g. ``scsi_id=..,scsi_sn=..,mode_page=..``.

        tgtadm sends ``--params`` as ``targetOps <params>,``; the trailing
        comma ends tgtd's parsing of the last value.
        """
        self.request(MODE_DEVICE, OP_UPDATE,
                     _terminate('targetOps %s,' % params), tid=tid, lun=lun)

    # -- accounts ----------------------------------------------------------

    def show_accounts(self) -> str:
        return self._send(MODE_ACCOUNT, OP_SHOW)

    def accounts(self) -> list[str]:
        return parse_accounts(self.show_accounts())

    def new_account(self, user: str, password: str) -> None:
        self._send(MODE_ACCOUNT, OP_NEW, ('user', user),
                   ('password', password))

    def delete_account(self, user: str) -> None:
        self._send(MODE_ACCOUNT, OP_DELETE, ('user', user))

    def bind_account(self, tid: int, user: str) -> None:
        self._send(MODE_ACCOUNT, OP_BIND, ('user', user), tid=tid)

    def unbind_account(self, tid: int, user: str) -> None:
        self._send(MODE_ACCOUNT, OP_UNBIND, ('user', user), tid=tid)
