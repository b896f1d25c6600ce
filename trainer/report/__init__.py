"""`hhh eval`: compare adapter versions with a judge that is not the reward model
(`compare`), and write the report (`render`)."""
