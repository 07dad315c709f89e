BEGIN TRANSACTION;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    time REAL NOT NULL
);
INSERT INTO "events" VALUES(1,'sweep_20261101120000/prep/a1b2c3d4e5f6','SUBMITTED',NULL,'',1.79562775961507153509e+09);
INSERT INTO "events" VALUES(2,'sweep_20261101120000/train/a1b2c3d4e5f6','SUBMITTED',NULL,'',1.79562775961518120764e+09);
INSERT INTO "events" VALUES(3,'sweep_20261101120000/eval/a1b2c3d4e5f6','SUBMITTED',NULL,'',1.79562775961521220208e+09);
INSERT INTO "events" VALUES(4,'sweep_20261101120000/prep/a1b2c3d4e5f6','RUNNING',NULL,'',1.79562775961535596846e+09);
INSERT INTO "events" VALUES(5,'sweep_20261101120000/train/a1b2c3d4e5f6','PENDING',NULL,'Dependency',1.79562775961539220805e+09);
INSERT INTO "events" VALUES(6,'sweep_20261101120000/prep/a1b2c3d4e5f6','COMPLETED',0,'',1.79562775961550116538e+09);
INSERT INTO "events" VALUES(7,'local_20261101130000/solo/0f0f0f0f0f0f','SUBMITTED',NULL,'',1.79562775961562967304e+09);
INSERT INTO "events" VALUES(8,'local_20261101130000/solo/0f0f0f0f0f0f','FAILED',137,'',1.79562775961572408675e+09);
CREATE TABLE jobs (
    key TEXT PRIMARY KEY,
    bundle TEXT NOT NULL,
    name TEXT NOT NULL,
    job_id TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    script TEXT NOT NULL DEFAULT '',
    stdout TEXT NOT NULL DEFAULT '',
    stderr TEXT NOT NULL DEFAULT '',
    scheduler TEXT NOT NULL DEFAULT 'slurm',
    machine_path TEXT NOT NULL DEFAULT '',
    submitted_at REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL DEFAULT 0
);
INSERT INTO "jobs" VALUES('sweep_20261101120000/prep/a1b2c3d4e5f6','sweep_20261101120000','prep','101','COMPLETED',0,'','/home/me/milex/slurm/sweep_20261101120000_prep.sh','/home/me/milex/slurm/sweep_20261101120000_prep-%j.out','/home/me/milex/slurm/sweep_20261101120000_prep-%j.err','slurm','/home/me/milex',1.79562775961488127712e+09,1.79562775961550116538e+09);
INSERT INTO "jobs" VALUES('sweep_20261101120000/train/a1b2c3d4e5f6','sweep_20261101120000','train','102','PENDING',NULL,'Dependency','/home/me/milex/slurm/sweep_20261101120000_train.sh','/home/me/milex/slurm/sweep_20261101120000_train-%j.out','/home/me/milex/slurm/sweep_20261101120000_train-%j.err','slurm','/home/me/milex',1.79562775961488127712e+09,1.79562775961539220805e+09);
INSERT INTO "jobs" VALUES('sweep_20261101120000/eval/a1b2c3d4e5f6','sweep_20261101120000','eval','103','SUBMITTED',NULL,'','/home/me/milex/slurm/sweep_20261101120000_eval.sh','/home/me/milex/slurm/sweep_20261101120000_eval-%j.out','/home/me/milex/slurm/sweep_20261101120000_eval-%j.err','slurm','/home/me/milex',1.79562775961488127712e+09,1.79562775961521220208e+09);
INSERT INTO "jobs" VALUES('sweep_20261101120000/report/a1b2c3d4e5f6','sweep_20261101120000','report','','SUBMITTED',NULL,'','/home/me/milex/slurm/sweep_20261101120000_report.sh','/home/me/milex/slurm/sweep_20261101120000_report-%j.out','/home/me/milex/slurm/sweep_20261101120000_report-%j.err','slurm','/home/me/milex',1.79562775961488127712e+09,1.79562775961488127712e+09);
INSERT INTO "jobs" VALUES('local_20261101130000/solo/0f0f0f0f0f0f','local_20261101130000','solo','7','FAILED',137,'','/home/me/milex/slurm/local_20261101130000_solo.sh','','','local','/home/me/milex',1.79562775961556124687e+09,1.79562775961572408675e+09);
CREATE INDEX jobs_by_id ON jobs (job_id);
CREATE INDEX jobs_by_bundle ON jobs (bundle);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('events',8);
COMMIT;
