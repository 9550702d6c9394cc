// Farm module
