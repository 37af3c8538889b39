-- A failed submission's detailed category, for administrators; the team
-- sees `not-scored` in `category`. Portable SQL.
ALTER TABLE contest_submissions ADD COLUMN category_detail TEXT;
