#!/usr/bin/env bash
# Checks the layering of src/ (STYLE.md, issue 10): a module imports only from layers below it.
# Lists every `crate::<module>` edge between top-level modules of the library and fails on an edge
# to the same or a higher layer (which includes every cycle), on a top-level module missing from the
# table below, and on a cycle between the files of one folder. Cheap (perl, no build).
#   bash scripts/layers.sh          # check
#   LAYERS_VERBOSE=1 bash scripts/layers.sh   # also print the edges
set -euo pipefail
cd "$(dirname "$0")/.."

# Lowest layer first; modules on one line share a layer and must not import each other.
LAYERS='
util preview audit
config
metrics
events
dicom
model samples
harmonize
spool outbox
tls
series route
ingest forward
pipeline jobs supervisor
status http systemd
daemon process
'

perl -e '
use strict; use warnings;
my ($layers, $verbose) = @ARGV;
my (%rank, $n);
for my $line (split /\n/, $layers) {
  next unless $line =~ /\S/;
  $n++;
  $rank{$_} = $n for split " ", $line;
}
my @files = split /\n/, `find src -name "*.rs" | sort`;
my (%edges, %intra, $bad);
for my $f (@files) {
  next if $f =~ m{^src/(lib|main)\.rs$};
  (my $rel = $f) =~ s{^src/}{};
  my @p = split m{/}, $rel;
  (my $top = $p[0]) =~ s/\.rs$//;
  my $file = @p > 1 ? ($p[1] =~ s/\.rs$//r) : "";
  unless (exists $rank{$top}) { print "layers: $f: module $top is in no layer (scripts/layers.sh)\n"; $bad = 1; next; }
  open my $h, "<", $f or die "$f: $!";
  my $src = do { local $/; <$h> };
  $src =~ s{//[^\n]*}{}g;          # comments (and doc links) are not imports
  $src =~ s{"(?:[^"\\]|\\.)*"}{""}gs; # nor strings
  my %to;
  # use crate::{a, b::c, d::{e, f}} (possibly over several lines): the names at depth 1
  while ($src =~ /crate::\{/g) {
    my ($depth, $tok, $i) = (1, "", pos($src));
    my $start_of_item = 1;
    while ($depth > 0 && $i < length $src) {
      my $c = substr($src, $i++, 1);
      if ($c eq "{") { $depth++; }
      elsif ($c eq "}") { $depth--; }
      elsif ($depth == 1 && $c eq ",") { $start_of_item = 1; }
      elsif ($depth == 1 && $start_of_item && $c =~ /[a-z_]/) {
        my $rest = substr($src, $i - 1); $rest =~ /^([a-z_][a-z0-9_]*)/; $to{$1} = 1; $i += length($1) - 1; $start_of_item = 0;
      }
    }
  }
  $to{$1} = 1 while $src =~ /\bcrate::([a-z_][a-z0-9_]*)\b/g;
  for my $t (sort keys %to) {
    next if $t eq "self";
    if ($t eq $top) {
      # inside one folder: crate::<top>::<file> edges between its files
      while ($src =~ /\bcrate::\Q$top\E::([a-z_][a-z0-9_]*)/g) { $intra{$top}{"$file $1"} = 1 if $file ne "" && $file ne "mod" && $1 ne $file; }
      next;
    }
    unless (exists $rank{$t}) { next; } # a type or function at the root (none today)
    $edges{"$top -> $t"} .= " $f" unless ($edges{"$top -> $t"} // "") =~ /\Q$f\E/;
    if ($rank{$t} >= $rank{$top}) {
      print "layers: $f: $top (layer $rank{$top}) imports $t (layer $rank{$t}): not a lower layer\n"; $bad = 1;
    }
  }
  if ($file ne "" && $file ne "mod") {
    while ($src =~ /\bsuper::([a-z_][a-z0-9_]*)/g) { $intra{$top}{"$file $1"} = 1 if $1 ne $file && -e "src/$top/$1.rs"; }
    while ($src =~ /\bsuper::\{([^}]*)\}/g) { for my $x (split /\s*,\s*/, $1) { $x =~ s/::.*//; $x =~ s/^\s+|\s+$//g; $intra{$top}{"$file $x"} = 1 if $x ne $file && -e "src/$top/$x.rs"; } }
  }
}
if ($verbose) { print "$_ :$edges{$_}\n" for sort keys %edges; }
for my $dir (sort keys %intra) {
  my $pairs = join "\n", keys %{$intra{$dir}};
  open my $ts, "-|", "printf \"%s\\n\" \"$pairs\" | tsort 2>&1 >/dev/null" or die;
  my $err = do { local $/; <$ts> };
  if ($err =~ /loop/) { print "layers: src/$dir/: the files of the folder import each other in a circle:\n$err"; $bad = 1; }
}
if ($bad) { exit 1 }
my $count = keys %edges;
print "layers: $count edges between top-level modules, all to lower layers; no cycle inside folders\n";
' "$LAYERS" "${LAYERS_VERBOSE:-}"
