-- Legacy version 20260202120000 (dbmate): crew-day views for productivity analytics.
-- One daily report is one crew-day, and the longest shift is the crew's day.

-- Per jobsite, day, daily report and crew type, from approved, non-archived employee work.
CREATE VIEW crew_max_hours AS
SELECT ew.jobsite_id,
       ew.work_date,
       ew.daily_report_id,
       ew.crew_type,
       MAX(ew.hours)                  AS crew_hours,
       SUM(ew.hours)                  AS total_man_hours,
       COUNT(DISTINCT ew.employee_id) AS employee_count
  FROM fact_employee_work ew
  JOIN dim_daily_report dr ON dr.id = ew.daily_report_id
 WHERE ew.archived_at IS NULL AND dr.approved AND NOT dr.archived
 GROUP BY ew.jobsite_id, ew.work_date, ew.daily_report_id, ew.crew_type;

-- Per jobsite, day and crew type: the crews' average day, man-hours, people and crew count.
CREATE VIEW crew_hours_by_day AS
SELECT m.jobsite_id,
       m.work_date,
       m.crew_type,
       AVG(m.crew_hours)       AS avg_crew_hours,
       SUM(m.total_man_hours)  AS total_man_hours,
       SUM(m.employee_count)   AS total_employees,
       COUNT(*)                AS crew_count
  FROM crew_max_hours m
 GROUP BY m.jobsite_id, m.work_date, m.crew_type;
