"""Class tables: the 30 ImageNet VID classes (public, fixed) and SynthVID's own classes.

A dataset's class list is the tuple of the strings that appear in its annotation files' ``name``
field; a record's ``label`` is the 0-based index into that tuple. For ILSVRC2015 VID these strings
are WordNet ids, in the order every public VID codebase uses (FGFA, mmtracking, MEGA...), so
``label + 1`` is the class index of the devkit detection file.
"""

from __future__ import annotations

# (WordNet id, human-readable name) in the standard order of the 30 VID classes.
VID_CLASS_TABLE: tuple[tuple[str, str], ...] = (
    ("n02691156", "airplane"),
    ("n02419796", "antelope"),
    ("n02131653", "bear"),
    ("n02834778", "bicycle"),
    ("n01503061", "bird"),
    ("n02924116", "bus"),
    ("n02958343", "car"),
    ("n02402425", "cattle"),
    ("n02084071", "dog"),
    ("n02121808", "domestic_cat"),
    ("n02503517", "elephant"),
    ("n02118333", "fox"),
    ("n02510455", "giant_panda"),
    ("n02342885", "hamster"),
    ("n02374451", "horse"),
    ("n02129165", "lion"),
    ("n01674464", "lizard"),
    ("n02484322", "monkey"),
    ("n03790512", "motorcycle"),
    ("n02324045", "rabbit"),
    ("n02509815", "red_panda"),
    ("n02411705", "sheep"),
    ("n01726692", "snake"),
    ("n02355227", "squirrel"),
    ("n02129604", "tiger"),
    ("n04468005", "train"),
    ("n01662784", "turtle"),
    ("n04530566", "watercraft"),
    ("n02062744", "whale"),
    ("n02391049", "zebra"),
)

VID_CLASSES: tuple[str, ...] = tuple(wnid for wnid, _ in VID_CLASS_TABLE)
VID_CLASS_NAMES: tuple[str, ...] = tuple(name for _, name in VID_CLASS_TABLE)
WNID_TO_NAME: dict[str, str] = dict(VID_CLASS_TABLE)

# SynthVID classes: identical silhouettes and random colours, told apart only by fine detail
# (surface pattern, or a notched outline) that blur, noise, JPEG and occlusion destroy.
SYNTHVID_CLASSES: tuple[str, ...] = (
    "plain",  # no pattern: what any blurred textured object also looks like
    "stripes",  # parallel bars
    "dots",  # a lattice of small discs
    "checker",  # small checkerboard
    "rings",  # concentric rings around the centre
    "grid",  # thin crossing lines
    "chevrons",  # V-shaped bars
    "notched",  # plain fill, outline cut by small triangular notches
)


def display_name(class_id: str) -> str:
    """Human-readable name of a class id (``n02691156`` -> ``airplane``); other ids are returned as is."""
    return WNID_TO_NAME.get(class_id, class_id)
