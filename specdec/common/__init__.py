"""What every part of specdec shares and none owns: the config mechanism, atomic files, the environment
record, the output-folder policy, text tables."""
