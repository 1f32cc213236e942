"""Run inside Blender by ``farm addon install``: install the add-on's zip for this Blender's
user and enable it, then save the preferences. Blender 4.2+ takes it as an extension
(the user's own repository), older ones as a legacy add-on.

    blender -b --python-exit-code 1 --python addon_install.py -- ZIP
    python addon_install.py ZIP            (a Python whose bpy module is Blender)

Prints one line ``buildcat-addon: {json}`` saying where it went and whether it is enabled.
"""

import json
import sys

import bpy

MODULE = "buildcat_farm"


def main(argv: list[str]) -> int:
    zip_path = argv[0]
    if bpy.app.version >= (4, 2, 0):
        # A legacy copy of an older install would register the same classes twice.
        if MODULE in bpy.context.preferences.addons:
            bpy.ops.preferences.addon_disable(module=MODULE)
        bpy.ops.extensions.package_install_files(
            filepath=zip_path, repo="user_default", enable_on_install=True, overwrite=True
        )
        module = f"bl_ext.user_default.{MODULE}"
        where = bpy.utils.user_resource("EXTENSIONS", path="user_default")
    else:
        bpy.ops.preferences.addon_install(filepath=zip_path, overwrite=True)
        bpy.ops.preferences.addon_enable(module=MODULE)
        module = MODULE
        where = bpy.utils.user_resource("SCRIPTS", path="addons")
    bpy.ops.wm.save_userpref()
    enabled = module in bpy.context.preferences.addons
    report = {
        "module": module,
        "enabled": enabled,
        "folder": where,
        "blender": bpy.app.version_string,
        "config": bpy.utils.user_resource("CONFIG"),
    }
    print("buildcat-addon: " + json.dumps(report), flush=True)
    return 0 if enabled else 1


if __name__ == "__main__":
    arguments = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    sys.exit(main(arguments))
