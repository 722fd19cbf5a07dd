"""Statistics of the real LLP annotation files that the synthetic set follows, embedded as
constants: the label sets and their frequencies (AVVP_train.csv), and per class the modality of a
weak label, the extent of its events, and the weak labels' noise (the val+test dense files)."""

# label set -> number of AVVP_train.csv videos carrying exactly that set (10,000 in all)
LABEL_SETS = (
    ("Speech,Dog", 668), ("Speech,Violin_fiddle", 571), ("Cello,Violin_fiddle", 497), ("Speech,Singing", 497),
    ("Helicopter", 439), ("Vacuum_cleaner", 388), ("Speech,Car", 366), ("Accordion", 361), ("Singing", 350),
    ("Speech,Basketball_bounce", 320), ("Speech,Motorcycle", 312), ("Car", 253),
    ("Speech,Baby_cry_infant_cry", 251), ("Speech,Cheering", 247), ("Chicken_rooster", 228),
    ("Speech,Acoustic_guitar", 227), ("Chainsaw", 218), ("Violin_fiddle", 218), ("Cheering", 215),
    ("Blender", 213), ("Frying_(food)", 208), ("Speech,Chicken_rooster", 204), ("Baby_cry_infant_cry", 174),
    ("Speech,Cat", 164), ("Speech,Helicopter", 146), ("Speech,Frying_(food)", 135),
    ("Basketball_bounce", 132), ("Lawn_mower", 130), ("Singing,Acoustic_guitar", 129), ("Fire_alarm", 116),
    ("Speech,Vacuum_cleaner", 104), ("Speech,Fire_alarm", 102), ("Speech,Clapping", 96),
    ("Speech,Baby_laughter", 89), ("Speech,Lawn_mower", 85), ("Speech,Blender", 78), ("Motorcycle", 76),
    ("Speech,Chainsaw", 66), ("Speech,Telephone_bell_ringing", 62), ("Speech,Banjo", 61),
    ("Violin_fiddle,Acoustic_guitar", 61), ("Acoustic_guitar", 58), ("Baby_laughter", 55), ("Dog", 51),
    ("Banjo,Singing", 45), ("Speech,Accordion", 43), ("Cello", 41), ("Clapping", 39),
    ("Cheering,Singing", 38), ("Banjo,Violin_fiddle", 36), ("Telephone_bell_ringing", 36),
    ("Singing,Violin_fiddle", 28), ("Speech,Cello", 26), ("Singing,Accordion", 21), ("Banjo", 17),
    ("Cat", 16), ("Speech,Cello,Violin_fiddle", 11), ("Banjo,Singing,Violin_fiddle", 10),
    ("Speech,Cheering,Singing", 10), ("Cello,Singing", 9), ("Chainsaw,Motorcycle", 9),
    ("Singing,Clapping", 9), ("Violin_fiddle,Accordion", 9), ("Banjo,Acoustic_guitar", 8),
    ("Cheering,Clapping", 7), ("Speech,Cheering,Clapping", 7), ("Dog,Singing", 6), ("Speech,Dog,Cat", 6),
    ("Speech,Singing,Acoustic_guitar", 6), ("Cello,Acoustic_guitar", 5), ("Dog,Cat", 5),
    ("Car,Motorcycle", 4), ("Cello,Violin_fiddle,Accordion", 4), ("Dog,Baby_cry_infant_cry", 4),
    ("Cello,Accordion", 3), ("Cello,Singing,Violin_fiddle", 3), ("Dog,Chicken_rooster", 3),
    ("Dog,Vacuum_cleaner", 3), ("Speech,Lawn_mower,Motorcycle", 3), ("Speech,Singing,Clapping", 3),
    ("Dog,Motorcycle", 2), ("Dog,Violin_fiddle", 2), ("Lawn_mower,Motorcycle", 2),
    ("Speech,Banjo,Acoustic_guitar", 2), ("Speech,Banjo,Singing", 2), ("Speech,Chainsaw,Lawn_mower", 2),
    ("Speech,Chainsaw,Motorcycle", 2), ("Speech,Cheering,Basketball_bounce", 2),
    ("Speech,Dog,Chicken_rooster", 2), ("Accordion,Acoustic_guitar", 1), ("Banjo,Accordion", 1),
    ("Banjo,Singing,Acoustic_guitar", 1), ("Banjo,Violin_fiddle,Acoustic_guitar", 1),
    ("Cat,Acoustic_guitar", 1), ("Cello,Banjo", 1), ("Cello,Singing,Acoustic_guitar", 1),
    ("Cello,Violin_fiddle,Acoustic_guitar", 1), ("Chainsaw,Lawn_mower", 1), ("Cheering,Basketball_bounce", 1),
    ("Dog,Baby_laughter", 1), ("Dog,Chainsaw", 1), ("Dog,Clapping", 1), ("Dog,Helicopter", 1),
    ("Dog,Telephone_bell_ringing", 1), ("Lawn_mower,Helicopter", 1), ("Singing,Baby_cry_infant_cry", 1),
    ("Speech,Banjo,Violin_fiddle", 1), ("Speech,Car,Motorcycle", 1), ("Speech,Cheering,Dog", 1),
    ("Speech,Dog,Baby_laughter", 1), ("Speech,Dog,Clapping", 1), ("Speech,Dog,Singing", 1),
    ("Speech,Singing,Accordion", 1), ("Speech,Singing,Violin_fiddle", 1),
    ("Speech,Violin_fiddle,Accordion", 1), ("Speech,Violin_fiddle,Acoustic_guitar", 1),
    ("Violin_fiddle,Clapping", 1),
)
# class: (audible only, visible only, both, neither) counts of val+test weak labels; 'neither' (1.1%)
# is weak-label noise: a label with no event in either dense file
MODALITY_COUNTS = {
    "Speech": (752, 2, 217, 19),
    "Car": (2, 27, 104, 1),
    "Cheering": (74, 5, 49, 4),
    "Dog": (13, 21, 134, 1),
    "Cat": (2, 15, 39, 1),
    "Frying_(food)": (4, 1, 59, 1),
    "Basketball_bounce": (4, 14, 61, 2),
    "Fire_alarm": (6, 0, 30, 0),
    "Chainsaw": (1, 0, 44, 0),
    "Cello": (23, 5, 93, 1),
    "Banjo": (8, 2, 34, 1),
    "Singing": (81, 1, 180, 3),
    "Chicken_rooster": (7, 5, 86, 0),
    "Violin_fiddle": (39, 6, 186, 1),
    "Vacuum_cleaner": (6, 1, 92, 0),
    "Baby_laughter": (7, 0, 25, 0),
    "Accordion": (21, 1, 59, 0),
    "Lawn_mower": (3, 1, 40, 0),
    "Motorcycle": (4, 7, 71, 0),
    "Helicopter": (9, 2, 92, 0),
    "Acoustic_guitar": (13, 16, 126, 0),
    "Telephone_bell_ringing": (8, 0, 11, 0),
    "Baby_cry_infant_cry": (13, 1, 62, 1),
    "Blender": (0, 1, 55, 0),
    "Clapping": (52, 6, 69, 2),
}
# class: how many segments (1..10) an audible val+test weak label covers in AVVP_eval_audio.csv
AUDIO_COVERAGE = {
    "Speech": (110, 133, 93, 105, 99, 80, 70, 72, 69, 138),
    "Car": (1, 0, 2, 2, 1, 2, 3, 3, 3, 89),
    "Cheering": (6, 16, 12, 13, 6, 5, 12, 6, 2, 45),
    "Dog": (15, 7, 19, 11, 11, 14, 10, 11, 15, 34),
    "Cat": (3, 12, 3, 3, 5, 5, 2, 2, 3, 3),
    "Frying_(food)": (0, 0, 2, 2, 0, 1, 0, 1, 0, 57),
    "Basketball_bounce": (12, 9, 6, 10, 9, 8, 3, 2, 2, 4),
    "Fire_alarm": (0, 2, 1, 2, 5, 2, 4, 1, 3, 16),
    "Chainsaw": (1, 1, 4, 0, 1, 1, 1, 0, 5, 31),
    "Cello": (1, 0, 1, 2, 1, 3, 8, 3, 4, 93),
    "Banjo": (0, 3, 2, 1, 0, 1, 3, 0, 1, 31),
    "Singing": (4, 5, 12, 20, 17, 22, 23, 36, 19, 103),
    "Chicken_rooster": (7, 4, 5, 6, 5, 5, 9, 7, 7, 38),
    "Violin_fiddle": (1, 2, 4, 7, 7, 14, 16, 11, 17, 146),
    "Vacuum_cleaner": (1, 1, 7, 4, 1, 2, 3, 2, 3, 74),
    "Baby_laughter": (1, 2, 4, 5, 1, 3, 6, 3, 1, 6),
    "Accordion": (1, 0, 1, 0, 2, 5, 1, 4, 2, 64),
    "Lawn_mower": (2, 1, 2, 1, 2, 2, 2, 3, 2, 26),
    "Motorcycle": (0, 3, 1, 6, 4, 1, 4, 0, 2, 54),
    "Helicopter": (2, 1, 1, 2, 2, 1, 1, 1, 5, 85),
    "Acoustic_guitar": (2, 3, 3, 3, 2, 6, 10, 11, 14, 85),
    "Telephone_bell_ringing": (0, 2, 2, 5, 0, 2, 1, 2, 0, 5),
    "Baby_cry_infant_cry": (0, 1, 1, 3, 3, 7, 10, 8, 13, 29),
    "Blender": (1, 6, 2, 5, 5, 7, 5, 4, 3, 17),
    "Clapping": (12, 17, 13, 14, 8, 6, 6, 6, 6, 33),
}
# class: how many segments (1..10) a visible val+test weak label covers in AVVP_eval_visual.csv
VISUAL_COVERAGE = {
    "Speech": (27, 34, 30, 27, 22, 16, 13, 16, 8, 26),
    "Car": (1, 2, 2, 2, 3, 5, 4, 8, 4, 100),
    "Cheering": (2, 2, 6, 5, 2, 2, 4, 2, 0, 29),
    "Dog": (0, 1, 1, 2, 0, 6, 4, 4, 4, 133),
    "Cat": (0, 1, 0, 1, 0, 3, 3, 3, 0, 43),
    "Frying_(food)": (1, 1, 1, 3, 2, 1, 0, 1, 1, 49),
    "Basketball_bounce": (10, 12, 11, 9, 12, 9, 6, 3, 0, 3),
    "Fire_alarm": (0, 1, 3, 1, 3, 1, 2, 2, 4, 13),
    "Chainsaw": (0, 0, 2, 2, 2, 2, 2, 2, 3, 29),
    "Cello": (1, 1, 2, 1, 2, 6, 3, 1, 2, 79),
    "Banjo": (1, 1, 1, 0, 0, 0, 1, 0, 1, 31),
    "Singing": (6, 6, 9, 12, 14, 23, 18, 24, 13, 56),
    "Chicken_rooster": (0, 4, 0, 0, 2, 1, 1, 2, 2, 79),
    "Violin_fiddle": (3, 2, 3, 7, 3, 4, 7, 6, 3, 154),
    "Vacuum_cleaner": (1, 1, 0, 2, 2, 3, 0, 3, 7, 74),
    "Baby_laughter": (0, 1, 2, 3, 2, 3, 4, 3, 0, 7),
    "Accordion": (0, 2, 2, 1, 1, 2, 2, 0, 0, 50),
    "Lawn_mower": (0, 0, 0, 0, 1, 1, 1, 2, 2, 34),
    "Motorcycle": (1, 2, 2, 1, 1, 3, 3, 5, 4, 56),
    "Helicopter": (2, 0, 3, 3, 2, 3, 1, 4, 5, 71),
    "Acoustic_guitar": (0, 2, 5, 4, 3, 1, 1, 2, 2, 122),
    "Telephone_bell_ringing": (0, 0, 1, 1, 1, 3, 1, 0, 0, 4),
    "Baby_cry_infant_cry": (0, 2, 0, 2, 3, 6, 5, 3, 7, 35),
    "Blender": (0, 0, 1, 2, 0, 1, 1, 2, 1, 48),
    "Clapping": (7, 11, 8, 8, 5, 4, 3, 3, 2, 24),
}
# number of runs (columns: 1..5) of a label covering k segments (rows: k = 1..9), val+test
RUNS_GIVEN_COVERAGE = {
    "audio": ((183, 0, 0, 0, 0), (183, 48, 0, 0, 0), (147, 46, 10, 0, 0), (146, 72, 10, 4, 0),
              (100, 66, 24, 6, 1), (101, 69, 30, 5, 0), (112, 78, 21, 2, 0), (98, 78, 23, 0, 0),
              (115, 86, 0, 0, 0)),
    "visual": ((63, 0, 0, 0, 0), (79, 10, 0, 0, 0), (79, 13, 3, 0, 0), (76, 18, 4, 1, 0),
               (48, 30, 9, 0, 1), (69, 32, 7, 1, 0), (56, 29, 4, 1, 0), (61, 36, 4, 0, 0),
               (44, 31, 0, 0, 0)),
}
# first run starts at segment 0 / last run ends at segment 10, for partial (not all-10) events:
# (neither, end only, start only, both) counts over val+test, single-run and multi-run events
ANCHORS = {
    "audio": {1: (331, 452, 402, 0), 2: (98, 155, 136, 290)},
    "visual": {1: (130, 204, 241, 0), 2: (26, 49, 50, 109)},
}
# Missing weak labels: val+test videos hold 65 events (audio, visual or both) of a class that is
# not among their weak labels (in 54 of the 1,849 videos): the other half of the weak labels' noise.
MISSING_PER_VIDEO = 65 / 1849
MISSING_KIND_COUNTS = (25, 14, 26)   # audible only, visible only, both
MISSING_CLASS_COUNTS = {"Speech": 19, "Car": 2, "Cheering": 3, "Dog": 2, "Cat": 6, "Basketball_bounce": 2, "Cello": 2,
                        "Singing": 8, "Violin_fiddle": 2, "Accordion": 2, "Lawn_mower": 1, "Motorcycle": 2,
                        "Helicopter": 1, "Acoustic_guitar": 6, "Clapping": 7}
AV_SAME_EXTENT = 0.40   # P(one extent for both) for a label both audible and visible (LLP: 60% identical)
COVERAGE_PRIOR = 2.0    # pseudo-observations (shaped like the all-class histogram) per class histogram
