/// The release, for `--version` and the Debian package (the Makefile reads it here).
let xenpciVersion = "0.9.0"
