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
"""oslo.privsep contexts of fuse_cinder.

``tgt_pctxt`` drives tgtd's management socket (fuse_cinder.privileged.tgt).
tgtd serves a peer only when SO_PEERCRED reports uid 0 *and* gid 0; it
checks no capability. So the daemon must keep uid and gid 0 (leave the
``user`` and ``group`` options of its section unset) and needs no
capability for tgtd itself. It keeps one, CAP_SYS_PTRACE: after adding a
LUN it reads ``/proc/<tgtd>/fd`` to prove which file tgtd opened, and the
kernel allows that (PTRACE_MODE_READ) only to a caller whose permitted
capabilities include tgtd's (all of them) or which has CAP_SYS_PTRACE.
Without it the readlink fails with EACCES even for uid 0.

A deployment starts the daemon through rootwrap with a filter such as::

    privsep-rootwrap-fuse-tgt: RegExpFilter, privsep-helper, root,
      privsep-helper, --config-file, /etc/(?!\\.\\.).*, --privsep_context,
      fuse_cinder.privileged.tgt_pctxt, --privsep_sock_path, /tmp/.*
"""

from oslo_privsep import capabilities
from oslo_privsep import priv_context

tgt_pctxt = priv_context.PrivContext(
    'fuse_cinder',
    cfg_section='fuse_cinder_tgt_privileged',
    pypath=__name__ + '.tgt_pctxt',
    capabilities=[capabilities.CAP_SYS_PTRACE],
)
