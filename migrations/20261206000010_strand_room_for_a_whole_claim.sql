-- A claim updates every row of a page in one statement: it takes strands in
-- schedule order, which is the order they were inserted, so a batch covers
-- whole pages. None of the versions it leaves dead can be pruned until it
-- commits, so a page has room for a HOT update of all its rows only if it is
-- at most half full. At 70 (migration 20261204000002) about half of a
-- batch's updates found no room, and each of those wrote new entries into
-- every index of the table. The hot table holds only live work, so doubling
-- its pages costs little.
ALTER TABLE strand SET (fillfactor = 50);
