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
"""The names of the files the driver keeps in volumes_home.

The root helper (``fuse-cinder-files``) reads, writes and deletes only
files whose names match these patterns, and the rootwrap filters repeat
them (``tests/unit/test_rootwrap.py`` keeps both in step). Cinder's own
templates (``volume_name_template``, ``snapshot_name_template``) must keep
their defaults for that reason.
"""

import re

VOLUME_PREFIX = 'volume-'
SNAPSHOT_PREFIX = 'snapshot-'
TEMP_PREFIX = '.fuse_cinder_tmp-'
PROBE_PREFIX = '.fuse_cinder_probe-'

UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
#: volume-<uuid> or snapshot-<uuid>: what Cinder knows by name.
OBJECT = '(?:volume|snapshot)-' + UUID
#: volume-<uuid> alone: what a migration moves to another volumes_home.
VOLUME = 'volume-' + UUID
#: A copy being built, renamed to its object name once complete.
TEMP = re.escape(TEMP_PREFIX) + OBJECT + '-[0-9a-f]{8}'
#: The empty file that shows the mount is writable.
PROBE = re.escape(PROBE_PREFIX) + '[0-9a-f]{32}'

#: Files the driver owns and may read, write, serve or delete.
OWNED = '(?:%s|%s|%s)' % (OBJECT, TEMP, PROBE)
#: What a file may be renamed to.
RENAME_TARGET = '(?:%s|%s)' % (OBJECT, TEMP)
#: A file an operator asks to manage: any one plain name in volumes_home.
PLAIN = r'(?!\.\.?\Z)[^/\x00\n]{1,255}'

_OWNED_RE = re.compile(OWNED)
_RENAME_TARGET_RE = re.compile(RENAME_TARGET)
_PLAIN_RE = re.compile(PLAIN)
_OBJECT_RE = re.compile(OBJECT)
_VOLUME_RE = re.compile(VOLUME)


def _full(regex: re.Pattern[str], name: object) -> bool:
    return isinstance(name, str) and regex.fullmatch(name) is not None


def is_owned(name: str) -> bool:
    """A file the driver made: its volumes, snapshots and temporaries."""
    return _full(_OWNED_RE, name)


def is_object(name: str) -> bool:
    """volume-<uuid> or snapshot-<uuid>."""
    return _full(_OBJECT_RE, name)


def is_volume(name: str) -> bool:
    """volume-<uuid>."""
    return _full(_VOLUME_RE, name)


def is_temp_of(name: str, of: str) -> bool:
    """The temporary name under which ``of`` is built (temp_name)."""
    return (is_owned(name) and
            name.startswith('%s%s-' % (TEMP_PREFIX, of)) and
            len(name) == len(temp_name(of, '0' * 8)))


def is_rename_target(name: str) -> bool:
    return _full(_RENAME_TARGET_RE, name)


def is_plain(name: str) -> bool:
    """One file name: no directory, not '.' or '..', no NUL or newline."""
    return _full(_PLAIN_RE, name)


def temp_name(name: str, token: str) -> str:
    """The temporary name under which ``name`` is built."""
    return '%s%s-%s' % (TEMP_PREFIX, name, token)


def probe_name(token: str) -> str:
    return PROBE_PREFIX + token
