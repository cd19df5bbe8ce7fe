"""The privileged, syscall-level layer: small, stdlib-only, auditable.

Everything here runs between fork and exec (or in the fresh, single-threaded process
that creates a sandbox), so nothing here may import IPython, ipywidgets, jupyter_client
or start a thread. One module per namespace concern; ``contain`` runs them in order:

- ``syscalls``  ctypes bindings (unshare, mount, pivot_root, mount_setattr, prctl)
- ``userns``    uid/gid maps, written from the parent side
- ``utsns``     the hostname
- ``netns``     bring ``lo`` up in a new network namespace
- ``mntns``     private propagation, read-only host root, /proc, /sys, /tmp, binds
- ``caps``      the capability set of sandbox root: planned in the launcher, applied last
- ``seccomp``   the syscall filter: compiled in the launcher, installed last (with
                no_new_privs); ``profiles/default.json`` is the default profile
- ``confine``   both as one step: ``plan`` in the launcher, ``apply_from_child`` last
- ``init``      the sandbox's PID 1: reaps zombies, forwards signals, honours the lifeline
- ``contain``   the setup checklist: parent side and child side
- ``procfs``    facts read back from /proc (namespace ids, id maps)
"""
