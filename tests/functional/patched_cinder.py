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
"""A private copy of the installed Cinder, to patch without touching it.

The copy goes first on PYTHONPATH of the processes that should run the
patched code; the installed Cinder (shared with other suites) stays as it
was.  Cinder's own tests are left out of the copy to keep it small.
"""

import os
import shutil
import subprocess
import sys

import pytest

from fuse_cinder.cmd import patch_cinder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# python-cinderclient's command in this environment, and the mark for the
# tests that drive it.
CINDER_CLI = os.path.join(os.path.dirname(sys.executable), 'cinder')
needs_cinder_cli = pytest.mark.skipif(
    not os.access(CINDER_CLI, os.X_OK),
    reason='python-cinderclient is not installed')


def copy_installed_cinder(dest, with_tests=False):
    """Copy the cinder package and its dist-info into ``dest``."""
    site = patch_cinder.default_site_packages()
    os.makedirs(dest, exist_ok=True)
    ignore = ['__pycache__'] + ([] if with_tests else ['tests'])
    shutil.copytree(os.path.join(site, 'cinder'),
                    os.path.join(dest, 'cinder'),
                    ignore=shutil.ignore_patterns(*ignore))
    for name in os.listdir(site):
        if name.lower().startswith('cinder-') and name.endswith(
                ('.dist-info', '.egg-info')):
            shutil.copytree(os.path.join(site, name),
                            os.path.join(dest, name))
    return str(dest)


def run_patch_command(site, *args):
    """fuse-cinder-patch as a separate process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, '-m', 'fuse_cinder.cmd.patch_cinder',
         '--site-packages', str(site)] + list(args),
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO))


def patched_copy(dest):
    """A patched copy of the installed Cinder; returns its directory."""
    site = copy_installed_cinder(dest, with_tests=True)
    res = run_patch_command(site, 'apply')
    if res.returncode != 0:
        raise RuntimeError('fuse-cinder-patch apply failed:\n%s%s'
                           % (res.stdout, res.stderr))
    return site


def pythonpath(site):
    """PYTHONPATH putting the patched copy before the installed Cinder."""
    parts = [str(site), REPO]
    if os.environ.get('PYTHONPATH'):
        parts.append(os.environ['PYTHONPATH'])
    return os.pathsep.join(parts)
