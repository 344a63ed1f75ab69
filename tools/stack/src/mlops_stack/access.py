"""Letting the unprivileged database user reach its data directory, and nothing more.

As root the stack runs PostgreSQL as a system user. When the state directory sits below a private
directory (root's home, ``mktemp -d``: mode 0700), that user cannot traverse the path to its
data. Rather than loosening those directories for everyone, each directory on the path that
blocks the user gets one POSIX ACL entry: search (``x``, no listing, no reading) for that user
alone. Group and other permissions stay as they were.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import struct
from pathlib import Path

ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_ENTRY = struct.Struct("<HHI")
_X = 0o1


class AccessError(RuntimeError):
    pass


def _read_acl(path: Path) -> list[tuple[int, int, int]] | None:
    try:
        raw = os.getxattr(path, ACL_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    (version,) = struct.unpack_from("<I", raw)
    if version != _ACL_VERSION:
        raise AccessError(f"{path}: unknown POSIX ACL version {version}")
    return [_ENTRY.unpack_from(raw, off) for off in range(4, len(raw), _ENTRY.size)]


def can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may search (``x``) the directory, by its mode bits and ACL."""
    st = path.stat()
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    acl = _read_acl(path)
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if acl is None:
        if st.st_gid in groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)
    mask = next((perm for tag, perm, _ in acl if tag == _MASK), 0o7)
    for tag, perm, ident in acl:
        if tag == _USER and ident == user.pw_uid:
            return bool(perm & mask & _X)
    group_perms = [
        perm
        for tag, perm, ident in acl
        if (tag == _GROUP_OBJ and st.st_gid in groups) or (tag == _GROUP and ident in groups)
    ]
    if group_perms:
        return any(perm & mask & _X for perm in group_perms)
    return bool(st.st_mode & stat.S_IXOTH)


def _grant_search(path: Path, uid: int) -> None:
    mode = path.stat().st_mode
    entries = _read_acl(path) or [
        (_USER_OBJ, (mode >> 6) & 0o7, _UNDEFINED_ID),
        (_GROUP_OBJ, (mode >> 3) & 0o7, _UNDEFINED_ID),
        (_OTHER, mode & 0o7, _UNDEFINED_ID),
    ]
    users = {ident: perm for tag, perm, ident in entries if tag == _USER}
    users[uid] = users.get(uid, 0) | _X
    kept = [e for e in entries if e[0] not in (_USER, _MASK)]
    group_union = 0
    for tag, perm, _ in kept:
        if tag in (_GROUP_OBJ, _GROUP):
            group_union |= perm
    # The mask must let the new entry through; it never widens the owning group's own entry,
    # whose effective rights stay (group entry AND mask).
    mask = group_union | _X
    for perm in users.values():
        mask |= perm
    new = [
        *[e for e in kept if e[0] == _USER_OBJ],
        *[(_USER, perm, ident) for ident, perm in sorted(users.items())],
        *[e for e in kept if e[0] in (_GROUP_OBJ, _GROUP)],
        (_MASK, mask, _UNDEFINED_ID),
        *[e for e in kept if e[0] == _OTHER],
    ]
    raw = struct.pack("<I", _ACL_VERSION) + b"".join(_ENTRY.pack(*e) for e in new)
    os.setxattr(path, ACL_XATTR, raw)


def grant_path(target: Path, user: pwd.struct_passwd) -> list[Path]:
    """Give ``user`` search permission on every directory above ``target`` that blocks it.

    Returns the directories changed (empty when the path was already reachable). Raises
    ``AccessError`` naming the directory when the filesystem has no POSIX ACLs.
    """
    changed = []
    for folder in reversed(target.resolve().parents):
        if can_traverse(folder, user):
            continue
        try:
            _grant_search(folder, user.pw_uid)
        except OSError as exc:
            raise AccessError(
                f"{user.pw_name} cannot reach {target}: {folder} is private "
                f"(mode {stat.S_IMODE(folder.stat().st_mode):04o}) and granting {user.pw_name} "
                f"search permission on it failed ({exc.strerror}); put the state directory "
                "(MLOPS_HOME) below a directory others may traverse"
            ) from exc
        changed.append(folder)
    return changed
