-- A claim changes no indexed column (see TAKE in models/src/strand.rs), so it
-- can be a HOT update, which needs room on the row's own page: leave some.
-- New rows follow at once; existing pages as they are rewritten.
ALTER TABLE strand SET (fillfactor = 70);
