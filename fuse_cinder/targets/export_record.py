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
"""The record of one export: a small tgt config file in volumes_dir.

It holds what tgtd needs to rebuild the export (backing file, CHAP pair,
initiators, read-only) and is what tgtd's own service loads after a host
reboot (``etc/tgt/fuse_cinder.conf``), where tgt-admin parses it with
Config::General and hands values to a shell. So every value rendered is
checked first, always with ``re.fullmatch``: ``$`` would let a trailing
newline, and with it a second ``<target>`` block, through.

Initiator restriction: tgtd lets an initiator in when *either* its
address or its name is on the target's ACL, and tgt-admin (at boot) adds
the address ``ALL`` to every target whose config has no
``initiator-address``. A restricted target therefore also carries the
address ``0.0.0.0/32``, which no initiator can come from, so that its
initiator names are what decides - in tgtd now and whenever tgtd re-reads
the file. CHAP is required in every case.
"""

import dataclasses
import os
import re
from typing import Collection, Optional

from cinder import exception
from cinder.i18n import _

#: The ACL address entry that lets every initiator address in.
ALL_ADDRESSES = 'ALL'
#: An ACL address no initiator connects from; see the module docstring.
NO_ADDRESS = '0.0.0.0/32'
#: Suffix of the per-volume config files; the include glob relies on it.
CONF_SUFFIX = '.conf'

# Everything rendered into a config file (which tgt-admin parses at boot
# with Config::General and hands to a shell) is held to these patterns,
# always with fullmatch: '$' would let a trailing newline through.
_SAFE_VALUE_RE = re.compile(r'[A-Za-z0-9._:/+-]+')
_CHAP_RE = re.compile(r'[A-Za-z0-9._-]{1,255}')
# RFC 3720 names, limited to the characters real initiators use.
_INITIATOR_RE = re.compile(
    r'iqn\.\d{4}-\d{2}\.[A-Za-z0-9.-]+(:[A-Za-z0-9.:_-]+)?'
    r'|eui\.[0-9A-Fa-f]{16}'
    r'|naa\.[0-9A-Fa-f]{16}([0-9A-Fa-f]{16})?')
_MAX_INITIATOR_LEN = 223
_IQN_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9.:_-]*')
# Cinder's volume ids; the LUN serial is one without its dashes.
_VOLUME_ID_RE = re.compile(
    r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')
_HEADER_RE = re.compile(r'^# fuse_cinder target of volume (\S+);')


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """Everything a target config file describes."""

    iqn: str
    volume_id: str
    path: str
    chap_user: str
    chap_secret: str
    initiators: frozenset[str] = frozenset()
    #: Served read-only (os-export of a volume whose admin metadata says
    #: readonly=True): tgtd fails every write.
    readonly: bool = False

    @property
    def serial(self) -> str:
        """SCSI id and serial of the LUN: stable across tgtd restarts."""
        return self.volume_id.replace('-', '')


def is_initiator_name(value: str) -> bool:
    return bool(value) and value.split('.', 1)[0] in ('iqn', 'eui', 'naa')


def acl_for(initiators: Collection[str]) -> list[str]:
    """The ACL of a target restricted to ``initiators`` (ALL if none)."""
    if not initiators:
        return [ALL_ADDRESSES]
    return [NO_ADDRESS] + sorted(initiators)


def render_config(spec: ExportSpec, write_cache: bool,
                  bsoflags: str,
                  session_params: Optional[dict[str, int | str]] = None
                  ) -> str:
    """The tgt-admin config of one exported volume (tgtd's boot include).

    Call _check_spec first: every value lands in the file verbatim.
    ``session_params`` ({iSCSI key: int or Yes/No}, as the helper makes
    them from validated options) become tgt-admin's per-target lines.
    """
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
    lines.append('    scsi_id %s' % spec.serial)
    lines.append('    scsi_sn %s' % spec.serial)
    if spec.readonly:
        lines.append('    readonly 1')
    params = session_params or {}
    for key in sorted(params):
        lines.append('    %s %s' % (key, params[key]))
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
    iqn: Optional[str] = None
    path: Optional[str] = None
    user: Optional[str] = None
    secret: Optional[str] = None
    volume_id: Optional[str] = None
    initiators: set[str] = set()
    readonly = False
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
            elif key == 'readonly':
                readonly = value == '1'
    if not (iqn and path and user and secret and volume_id):
        return None
    return ExportSpec(iqn=iqn, volume_id=volume_id, path=path,
                      chap_user=user, chap_secret=secret,
                      initiators=frozenset(initiators), readonly=readonly)


def check_initiator(name: object) -> None:
    # The name ends up in the config file that tgt-admin reads at boot.
    if (not isinstance(name, str) or len(name) > _MAX_INITIATOR_LEN
            or not _INITIATOR_RE.fullmatch(name)):
        raise exception.InvalidConnectorException(
            missing=_('a valid iSCSI initiator name'))


def check_iqn(iqn: object) -> None:
    # The name also names the config file.
    if not isinstance(iqn, str) or not _IQN_RE.fullmatch(iqn):
        msg = _('Unsupported characters in the target name %r') % iqn
        raise exception.VolumeBackendAPIException(data=msg)


def check_spec(spec: ExportSpec) -> None:
    """Every value that render_config writes, fully matched."""
    check_iqn(spec.iqn)
    if not (isinstance(spec.volume_id, str)
            and _VOLUME_ID_RE.fullmatch(spec.volume_id)):
        msg = _('Unsupported volume id %r') % spec.volume_id
        raise exception.VolumeBackendAPIException(data=msg)
    if not (isinstance(spec.path, str)
            and _SAFE_VALUE_RE.fullmatch(spec.path)):
        msg = (_('Unsupported characters in the backing file %r')
               % spec.path)
        raise exception.VolumeBackendAPIException(data=msg)
    if not os.path.isabs(spec.path):
        msg = _('The backing file %s must be an absolute path') % spec.path
        raise exception.VolumeBackendAPIException(data=msg)
    if not all(isinstance(value, str) and _CHAP_RE.fullmatch(value)
               for value in (spec.chap_user, spec.chap_secret)):
        # Never echo the credentials themselves.
        msg = _('The CHAP credentials of target %s contain unsupported '
                'characters') % spec.iqn
        raise exception.VolumeBackendAPIException(data=msg)
    for name in spec.initiators:
        check_initiator(name)
