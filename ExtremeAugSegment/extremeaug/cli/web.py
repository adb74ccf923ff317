"""`extremeaug web` and `extremeaug web-user`: the labeling station in a browser (ExtremeAugWeb, on
trame-slicer; `pip install "extremeaug[web]"`). Imported only when one of them runs."""
from __future__ import annotations

from ..common.errors import ExtremeAugError

INSTALL = 'the web station needs trame-slicer: pip install "extremeaug[web]" (Python 3.10 or later)'


def cmd_web(a) -> int:
    try:
        from ExtremeAugWeb.server import WebStation
    except ImportError as error:
        raise ExtremeAugError(f"{INSTALL} ({error})") from error
    station = WebStation(a.dir, a.host, a.users, a.max_upload_mb)
    print(f"serving {station.root} on http://{a.host}:{a.port}/ " + (
        f"for the users of {a.users}" if a.users else "for this machine only (no --users: loopback)"), flush=True)
    station.serve(a.port, a.host)
    return 0


def cmd_web_user(a) -> int:
    from ExtremeAugWeb.access import Users

    token = Users(a.file).add(a.name)
    print(f"user {a.name} added to {a.file}; their token (shown once, keep it secret):\n{token}\n"
          f"they open http://HOST:PORT/?token={token}")
    return 0


def add_parser(sub) -> None:
    w = sub.add_parser("web", help="serve a project as a labeling station in the browser: cases, correction with "
                       "Slicer's segment editor, training, segmentation, versions")
    w.add_argument("dir", help="the project folder (the one the command line and the Slicer module open)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only; any "
                   "other needs --users)")
    w.add_argument("--port", type=int, default=8080)
    w.add_argument("--users", metavar="FILE", help="users and token hashes (`extremeaug web-user`); every request "
                   "must then carry a user's token")
    w.add_argument("--max-upload-mb", type=float, help="largest scan upload in MiB (default 2048)")
    w.set_defaults(func=cmd_web)
    u = sub.add_parser("web-user", help="add a user to a web station's users file and print their token once")
    u.add_argument("file", help="the users file (created when missing)")
    u.add_argument("name", help="the user's name, recorded with every label they accept")
    u.set_defaults(func=cmd_web_user)
