"""DVC and git, behind one door: experiments and the queue, the code version of a run, recovery advice."""
