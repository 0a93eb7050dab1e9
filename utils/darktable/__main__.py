"""``python -m utils.darktable``: print the darktable-cli in use, or why there is none."""
from utils.darktable.install import find_darktable
from utils.errors import cli_main
from utils.settings import configure


def main() -> None:
    settings = configure()
    dt = find_darktable(settings.DARKTABLE_PATH, settings.CACHE_DIR, settings.DARKTABLE_MIN_VERSION)
    print(f"darktable-cli: {dt.path} (darktable {dt.version_string})")


if __name__ == "__main__":
    cli_main(main)()
